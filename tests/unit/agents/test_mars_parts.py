"""The MARS parts one by one: the safety critics' causal cost, the regime features, the batched
variant network, the meta-controller and the manager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from config.schema import MarsConfig, MarsControllerConfig, MarsManagerConfig
from strategies.mars.controller import Controller, Record
from strategies.mars.labels import forward_drawdown_labels, horizon_bars
from strategies.mars.manager import Manager, PortfolioRecord
from strategies.mars.network import VariantStack, clip_grad_norm_per_member
from strategies.mars.regime import (
    COIN_FEATURES,
    MARKET_FEATURES,
    RegimeSpec,
    RegimeTracker,
    coin_regime,
)

SIX_HOURS = 6 * 3_600_000


def _walk(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.03, n)))


# -- the safety critics' cost ----------------------------------------------------------------------


def test_drawdown_labels_say_whether_the_next_h_closes_fall_below_the_limit() -> None:
    close = np.array([100.0, 99.0, 95.0, 89.0, 100.0, 100.0, 101.0, 90.0])
    labels, known = forward_drawdown_labels(close, horizon=3, drawdown=0.10, last=7)
    # t=0: min(99, 95, 89) <= 90 -> 1; t=1: min(95, 89, 100) <= 89.1 -> 1; t=2: 89 > 85.5 -> 0
    # t=3: min(100, 100, 101) > 80.1 -> 0; t=4: min(100, 101, 90) <= 90 -> 1
    assert known.tolist() == [True] * 5 + [False] * 3
    assert labels.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert horizon_bars(7.0, SIX_HOURS) == 28


def test_drawdown_labels_never_read_a_close_after_the_last_bar_nor_after_t_plus_h() -> None:
    close = _walk(400, 1)
    last, horizon = 300, 28
    labels, known = forward_drawdown_labels(close, horizon, 0.10, last)
    assert known.sum() == last - horizon + 1 and not known[last - horizon + 1 :].any()
    future = close.copy()
    future[last + 1 :] = future[last + 1 :] * 0.01  # a crash after the training window's end
    again, known_again = forward_drawdown_labels(future, horizon, 0.10, last)
    assert np.array_equal(labels, again) and np.array_equal(known, known_again)
    for t in (0, 57, last - horizon):
        moved = close.copy()
        moved[t + horizon + 1 :] *= 0.01  # everything after t + H
        moved_labels, _ = forward_drawdown_labels(moved, horizon, 0.10, last)
        assert moved_labels[t] == labels[t]
    with pytest.raises(ValueError, match="last bar 400 outside the 400 closes"):
        forward_drawdown_labels(close, horizon, 0.10, 400)


# -- regime features -------------------------------------------------------------------------------


def test_regime_features_are_causal_and_the_tracker_matches_the_batch_bit_for_bit() -> None:
    spec = RegimeSpec(SIX_HOURS, trend_days=20, lookback_days=90)
    closes = {"BTC": _walk(700, 2), "ETH": _walk(700, 3)}
    batch = {c: coin_regime(x, spec) for c, x in closes.items()}
    assert np.isnan(batch["BTC"][: spec.length - 1]).all()
    assert np.isfinite(batch["BTC"][spec.length - 1 :]).all()
    tracker = RegimeTracker(list(closes), spec)
    for t in range(700):
        for coin, x in closes.items():
            now = tracker.on_close(coin, x[t])
            assert np.array_equal(now, batch[coin][t], equal_nan=True)
        if t == 600:
            market = tracker.market()
            assert market.shape == (len(MARKET_FEATURES),)
            up = [float(batch[c][t][COIN_FEATURES.index("trend")] > 0) for c in closes]
            assert market[-1] == tracker.breadth() == sum(up) / 2
    for t in (spec.length - 1, 450, 650):
        future = closes["BTC"].copy()
        future[t + 1 :] *= np.linspace(0.2, 3.0, 700 - t - 1)  # rewrite everything after t
        assert np.array_equal(coin_regime(future, spec)[t], batch["BTC"][t])
        assert not np.array_equal(coin_regime(future, spec)[t + 1], batch["BTC"][t + 1])


# -- the batched network ---------------------------------------------------------------------------


def test_variant_stack_members_are_independent_networks_computed_together() -> None:
    torch.manual_seed(0)
    stack = VariantStack(3, in_channels=5, window=8, channels=(4, 6, 8), safety_hidden=4)
    coin = torch.randn(3, 7, 8, 5)
    features = stack.features(coin)
    assert features.shape == (3, 7, 2, 6)
    explicit = stack.features(coin, torch.zeros_like(coin))
    assert torch.allclose(features, explicit, atol=1e-6)  # the shared zero cash row
    q = stack.q_values(features, torch.zeros(3, 7))
    safety = stack.safety_logits(features)
    assert q.shape == (3, 7, 2) and safety.shape == (3, 7)
    # a loss on member 1 only leaves the other members' gradients at zero
    (q[1].sum() + safety[1].sum()).backward()
    for parameter in stack.parameters():
        assert parameter.grad[0].abs().sum() == 0 and parameter.grad[2].abs().sum() == 0
        assert parameter.grad[1].abs().sum() > 0
    # member 2 alone, selected, computes what it computed in the stack
    alone = stack.select([2])
    with torch.no_grad():
        again = alone.q_values(alone.features(coin[2:]), torch.zeros(1, 7))
    assert torch.allclose(again[0], q[2].detach(), atol=1e-6)
    norms = clip_grad_norm_per_member(stack, 1e-3)
    assert norms.shape == (3,)
    after = torch.stack(
        [torch.stack([p.grad[i].pow(2).sum() for p in stack.parameters()]).sum() for i in range(3)]
    ).sqrt()
    assert after[1] <= 1e-3 + 1e-9 and after[0] == 0


# -- the controller and the manager ----------------------------------------------------------------


def _planted_record(n: int = 4_000, seed: int = 4) -> tuple[Record, np.ndarray]:
    """Two regimes: calm (the coin rises) and crash (it falls hard); feature 1 (drawdown) says
    which. Variants: cash (0) and hold (1)."""
    rng = np.random.default_rng(seed)
    crash = (np.arange(n) // 200) % 4 == 3  # a quarter of the bars, in blocks
    rho = np.where(crash, rng.normal(-0.02, 0.03, n), rng.normal(0.004, 0.015, n))
    x = np.column_stack([rng.normal(0, 1, n), np.where(crash, 0.3, 0.02) + rng.normal(0, 0.03, n)])
    actions = np.column_stack([np.zeros(n), np.ones(n)])
    return Record(x, actions, rho, np.zeros(n, dtype=np.int64)), crash


def test_controller_fitted_on_realised_returns_shifts_weight_to_cash_in_planted_crashes() -> None:
    record, crash = _planted_record()
    controller = Controller(("cash", "hold"), width=2)
    assert np.allclose(controller.weights(record.x[:3]), 0.5)  # uniform until fitted
    summary = controller.fit(record, cost=0.0015, cfg=MarsControllerConfig())
    assert summary["fitted"] and summary["objective"][1] > summary["objective"][0]
    weights = controller.weights(record.x)
    assert np.allclose(weights.sum(axis=1), 1.0)
    assert weights[crash, 0].mean() > 0.8 > 0.2 > weights[~crash, 0].mean()
    assert controller.to_dict()["rows"] == len(record)


def test_manager_lowers_gross_exposure_in_planted_crashes_and_stays_in_its_bounds() -> None:
    record, crash = _planted_record()
    n = len(crash)
    z = np.zeros((n, len(MARKET_FEATURES)))
    z[:, 1] = record.x[:, 1]  # mean drawdown
    sleeves = np.full((n, 2), 0.5)
    rho = np.column_stack([record.rho, record.rho])
    cfg = MarsManagerConfig(floor=0.1)
    manager = Manager(cfg)
    assert manager.exposure(z[0]) == pytest.approx(cfg.initial)
    summary = manager.fit(PortfolioRecord(z, sleeves, rho, np.zeros(n, np.int64)), cost=0.0015)
    assert summary["fitted"]
    exposures = np.array([manager.exposure(row) for row in z])
    assert ((exposures >= 0.1) & (exposures <= 1.0)).all()
    assert exposures[crash].mean() < 0.3 < 0.7 < exposures[~crash].mean()


def test_mars_config_names_its_variants_learned_then_rules() -> None:
    mars = MarsConfig()
    assert mars.names == ("guarded", "careful", "balanced", "bold", "aggressive", "cash", "hold",
                          "trend")  # fmt: skip
    assert [v.threshold for v in mars.variants] == sorted(v.threshold for v in mars.variants)
