"""Training a coin's MARS variants as one batched network: per-seed artifacts, the safety masks,
and no look-ahead (nothing after the training window's last bar reaches the updates)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.events import Bar
from config.schema import (
    AppConfig,
    LiveConfig,
    MarketConfig,
    MarsConfig,
    MarsVariantConfig,
    TrainingConfig,
)
from strategies.agents.train import decision_range
from strategies.mars.artifact import load_ensemble, newest_ensemble, read_card, save_ensemble
from strategies.mars.live import NoEnsemblesError, build_mars_live, ensemble_folders, mars_root
from strategies.mars.module import MarsModule
from strategies.mars.training import train_ensembles
from tests.unit.agents.conftest import COST, TINY
from tests.unit.agents.test_crypto_module import replay_events

MARS = MarsConfig(
    variants=(
        MarsVariantConfig(name="guarded", threshold=0.3, penalty=1.0),
        MarsVariantConfig(name="aggressive", threshold=1.0, penalty=0.0),
    ),
    horizon_days=2.0,
    conservative=("cash", "guarded"),
)


def _one_evaluation(params):
    """TINY with the validation score taken once, at the end (a single checkpoint)."""
    return params.model_copy(update={"sam": params.sam.model_copy(update={"eval_interval": 10**9})})


@pytest.fixture(scope="module")
def trained(history, windows):
    return train_ensembles(history, windows, TINY, MARS, [3, 4], cost=COST)


def test_each_seed_gets_its_own_ensemble_of_every_learned_variant(trained, tmp_path) -> None:
    assert [t.seed for t in trained] == [3, 4]
    for ensemble in trained:
        assert ensemble.network.members == 2
        assert set(ensemble.scores["validation"]) == {"guarded", "aggressive", "buy_and_hold"}
        assert ensemble.training_run["updates"] > 0
        assert all(
            step > TINY.sam.learning_starts
            for step in ensemble.training_run["best_env_steps"].values()
        )  # trained checkpoints only
    first = trained[0].network.w1.detach()
    assert not torch.equal(first, trained[1].network.w1.detach())  # seeds differ
    folder = save_ensemble(tmp_path, trained[0])
    card = read_card(folder)
    assert card["kind"] == "mars" and card["trading_cost"] == COST
    assert card["mars"]["variants"][0]["name"] == "guarded"
    assert newest_ensemble(tmp_path, trained[0].coin) == folder
    loaded = load_ensemble(folder)
    for name, parameter in trained[0].network.named_parameters():
        assert torch.equal(parameter.detach(), getattr(loaded.network, name))
    assert loaded.train_end_ms == card["data_ranges"]["train"]["ms"][1]


def test_a_seed_trained_with_others_is_the_network_it_would_be_alone(history, windows) -> None:
    params = _one_evaluation(TINY)
    together = train_ensembles(history, windows, params, MARS, [3, 4], cost=COST)
    alone = train_ensembles(history, windows, params, MARS, [4], cost=COST)
    for name, parameter in together[1].network.named_parameters():
        assert torch.allclose(parameter, getattr(alone[0].network, name), atol=1e-5), name


def test_training_reads_nothing_after_the_training_windows_last_bar(history, windows) -> None:
    """Rewrite every bar (prices and DRU features) after the training window's last bar: with a
    single checkpoint (no validation choice), the trained networks, safety critics included,
    are bit-identical."""
    params = _one_evaluation(TINY)
    last = decision_range(history.close_time, windows.train, params.window).last
    ohlcv = history.ohlcv.copy()
    ohlcv[last + 1 :, :4] *= np.linspace(0.1, 0.5, len(ohlcv) - last - 1)[:, None]
    features = history.features.copy()
    features[last + 1 :] = -features[last + 1 :] + 3.0
    future = dataclasses.replace(history, ohlcv=ohlcv, features=features)
    base = train_ensembles(history, windows, params, MARS, [5], cost=COST)[0]
    moved = train_ensembles(future, windows, params, MARS, [5], cost=COST)[0]
    for name, parameter in base.network.named_parameters():
        assert torch.equal(parameter, getattr(moved.network, name)), name


def _steps(module: MarsModule, events) -> list:
    out = []
    for event in events:
        if isinstance(event, Bar):
            if (step := module.on_bar(event)) is not None:
                out.append(step)
        else:
            module.on_metric(event)
    return out


def test_a_variant_whose_critic_exceeds_its_threshold_holds_cash(
    trained, market, bars_6h, tmp_path
) -> None:
    model = load_ensemble(save_ensemble(tmp_path, trained[0]))
    events = replay_events(market, bars_6h)
    module = MarsModule(model, "ETH/USDT", trend_days=5)
    assert module.names == ("guarded", "aggressive", "cash", "hold", "trend")
    steps = _steps(module, events)
    ready = [s for s in steps if s.ready]
    assert len(ready) > 500 and not steps[0].ready
    masked = 0
    for step in ready:
        assert step.positions[2] == 0.0 and step.positions[3] == 1.0  # cash, hold
        assert np.isfinite(step.safety).all()
        for k, threshold in enumerate((0.3, 1.0)):
            if step.safety[k] > threshold:
                assert step.positions[k] == 0.0
                masked += 1
    # a threshold the critic always exceeds masks the coin at every bar
    module = MarsModule(model, "ETH/USDT", trend_days=5)
    module.threshold = torch.zeros(2)
    assert all((s.positions[:2] == 0.0).all() for s in _steps(module, events))


async def test_the_live_mars_policy_comes_from_the_registry_or_a_one_line_refusal(
    tmp_path: Path, history, windows
) -> None:
    mars = MARS
    cfg = AppConfig(
        market=MarketConfig(coins=("ETH",), timeframe="6h"),
        training=TrainingConfig(models_dir=tmp_path / "models"),
        live=LiveConfig(policy="mars+manager"),
        mars=mars,
    )
    with pytest.raises(NoEnsemblesError, match="has none for ETH"):
        ensemble_folders(cfg)
    trained = train_ensembles(history, windows, TINY, MARS, [1, 2], cost=COST)
    folders = [save_ensemble(mars_root(cfg), t) for t in trained]
    assert ensemble_folders(cfg) == {"ETH": max(folders)}
    pinned = cfg.model_copy(
        update={"mars": mars.model_copy(update={"models": {"ETH": folders[0].name}})}
    )
    assert ensemble_folders(pinned) == {"ETH": folders[0]}
    policy, host = await build_mars_live(pinned, None, None, 0)
    assert host is None and policy.name == "mars+manager" and policy.manager is not None
    assert policy.sets[0].modules["ETH"].model_id == folders[0].name
    wrong = cfg.model_copy(update={"mars": mars.model_copy(update={"models": {"ETH": "nope"}})})
    with pytest.raises(NoEnsemblesError, match=r"\[mars\].models.ETH = 'nope'"):
        ensemble_folders(wrong)
