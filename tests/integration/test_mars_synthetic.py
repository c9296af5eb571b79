"""MARS on the synthetic market with planted crashes: the meta-controller leans on its
conservative variants in a crash, ``mars`` loses less in the crashes than the paper's vote, and
nothing it decides reads the future (the safety critics' states, the regime features, the
controller's record and fits, the manager).

Planted regimes: on top of the generated market, every coin falls 40 % over 8 days at fixed
dates (one crash inside the validation window, three in the traded span), then stays there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest.metrics import max_drawdown
from backtest.pipeline import RecordingPolicy
from backtest.replay import ReplayDriver
from backtest.run import run_backtest
from bot.engine.account import Account
from bot.engine.step import DecisionContext
from bot.events import GrossExposure, VariantWeights
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.live.warmup import warm_up_on
from bot.timeframes import DAY_MS, to_ms
from config.schema import (
    AppConfig,
    DataConfig,
    DateWindow,
    FeatureConfig,
    MarketConfig,
    MarsConfig,
    MarsControllerConfig,
    MarsManagerConfig,
    WindowsConfig,
)
from strategies.agents.train import Windows, refine_history, train_cm
from strategies.crypto_module import CryptoModule
from strategies.features import with_known_at
from strategies.mars.artifact import load_ensemble, save_ensemble
from strategies.mars.module import MarsModule
from strategies.mars.policy import ALWAYS, MarsPolicy, ModuleSet
from strategies.mars.training import train_ensembles
from strategies.plans import prepare_modules
from strategies.portfolio import PortfolioVote
from strategies.registry import load_crypto_module, save_crypto_module
from tests.unit.agents.conftest import COST, TINY

COINS = ("BTC", "ETH")
WINDOWS = WindowsConfig(
    train=DateWindow(start=date(2021, 1, 1), end=date(2021, 4, 30)),
    validation=DateWindow(start=date(2021, 5, 1), end=date(2021, 6, 30)),
    test=DateWindow(start=date(2021, 7, 1), end=date(2021, 12, 31)),
)
CRASHES = ("2021-05-20", "2021-08-10", "2021-10-15", "2021-12-05")
CRASH_DAYS, CRASH_DEPTH = 8, 0.40
MARS = MarsConfig(
    controller=MarsControllerConfig(steps=100, learning_rate=0.1),
    manager=MarsManagerConfig(steps=100, learning_rate=0.1),
)
"""The default ensemble; the controller's and the manager's fits in 100 steps (a faster test)."""
REPLAY_FROM = to_ms("2021-04-01")
DECIDE_FROM = to_ms("2021-07-01")
PERTURB_AFTER = to_ms("2021-10-01")


def planted(candles: pd.DataFrame) -> pd.DataFrame:
    """``candles`` with the planted crashes: prices scaled by a path that falls ``CRASH_DEPTH``
    log-linearly over ``CRASH_DAYS`` from each crash date and stays down."""
    times = candles["open_time"].to_numpy()
    level = np.zeros(len(times))
    for day in CRASHES:
        start = to_ms(day)
        share = np.clip((times - start) / (CRASH_DAYS * DAY_MS), 0.0, 1.0)
        level += share * np.log(1.0 - CRASH_DEPTH)
    out = candles.copy()
    for column in ("open", "high", "low", "close"):
        out[column] = out[column] * np.exp(level)
    return out


def crash_mask(index: pd.Index) -> np.ndarray:
    """Closes inside a traded crash (its 8 days)."""
    ts = np.asarray(index, dtype=np.int64)
    inside = np.zeros(len(ts), dtype=bool)
    for day in CRASHES[1:]:
        start = to_ms(day)
        inside |= (ts > start) & (ts <= start + CRASH_DAYS * DAY_MS)
    return inside


@pytest.fixture(scope="module")
def market():
    return generate_market(
        list(COINS), to_ms("2020-07-01"), to_ms("2022-01-01"), seed=21, scenarios=()
    )


@pytest.fixture(scope="module")
def bars(market) -> dict[str, pd.DataFrame]:
    return {c: resample_candles(planted(market.candles[c]), "1h", "6h").frame for c in COINS}


@pytest.fixture(scope="module")
def trained(market, bars, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per coin, a tiny Crypto Module (the vote's) and a tiny MARS ensemble."""
    root = tmp_path_factory.mktemp("models")
    windows = Windows.from_config(WINDOWS)
    out: dict[str, dict[str, Path]] = {"cm": {}, "mars": {}}
    for seed, coin in enumerate(COINS, start=1):
        history = refine_history(
            coin, bars[coin], market.metrics, "6h", FeatureConfig(), windows.train,
            market_wide_assets=["MARKET"],
        )  # fmt: skip
        out["cm"][coin] = save_crypto_module(
            root / "cm", train_cm(history, windows, TINY, seed=seed, cost=COST)
        )
        ensemble = train_ensembles(history, windows, TINY, MARS, [seed], cost=COST)[0]
        out["mars"][coin] = save_ensemble(root / "mars", ensemble)
    return out


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> AppConfig:
    return AppConfig(
        data=DataConfig(dir=tmp_path_factory.mktemp("cfg")),
        market=MarketConfig(coins=COINS, timeframe="6h", start="2020-07-01", end="2021-12-31"),
        windows=WINDOWS,
    )


def driver_of(market, bars: dict[str, pd.DataFrame], after: int | None = None) -> ReplayDriver:
    """The replay from ``REPLAY_FROM``; with ``after``, every price after it rewritten."""
    frames = {}
    for coin, frame in bars.items():
        frame = frame[frame["open_time"] >= REPLAY_FROM].reset_index(drop=True)
        if after is not None:
            frame = frame.copy()
            later = frame["open_time"].to_numpy() >= after
            factor = np.linspace(3.0, 0.2, int(later.sum()))
            for column in ("open", "high", "low", "close"):
                frame.loc[later, column] = frame.loc[later, column] * factor
        frames[f"{coin}/USDT"] = frame
    metrics = with_known_at(market.metrics, 3_600_000)
    metrics = metrics[metrics["known_at"] >= REPLAY_FROM]
    return ReplayDriver(
        frames, exchange="synthetic", timeframe="6h", metrics=metrics, start_ms=DECIDE_FROM
    )


def mars_policy(trained, *, manager: bool = False, mars: MarsConfig = MARS) -> MarsPolicy:
    modules = {
        c: MarsModule(load_ensemble(trained["mars"][c]), f"{c}/USDT", trend_days=20) for c in COINS
    }
    return MarsPolicy(
        "USDT", COINS, [ModuleSet(*ALWAYS, modules)], mars, timeframe="6h",
        trend_days=20, cost=COST, manager=manager,
    )  # fmt: skip


async def replay(cfg, policy, driver) -> tuple:
    recording = RecordingPolicy(policy)
    result = await run_backtest(cfg, recording, driver, name=policy.name)
    return result, recording


def conservative_weights(notes, conservative) -> pd.Series:
    rows = [n for n in notes if isinstance(n, VariantWeights)]
    frame = pd.DataFrame(
        [{"ts": n.ts, **{k: w for k, w in n.weights if k in conservative}} for n in rows]
    )
    return frame.groupby("ts").mean().sum(axis=1)


@pytest.fixture(scope="module")
def runs(cfg, market, bars, trained):
    driver = driver_of(market, bars)
    vote = PortfolioVote(
        "USDT",
        [CryptoModule(load_crypto_module(trained["cm"][c]), f"{c}/USDT") for c in COINS],
    )
    return {
        "vote": asyncio.run(replay(cfg, vote, driver)),
        "mars": asyncio.run(replay(cfg, mars_policy(trained), driver)),
    }


async def test_the_controller_leans_on_conservative_variants_in_planted_crashes(runs) -> None:
    _, recording = runs["mars"]
    weights = conservative_weights(recording.regime, MARS.conservative)
    inside = crash_mask(weights.index)
    assert inside.sum() > 50
    assert recording.policy.fits and recording.policy.fits[0]["controller"]["fitted"]
    in_crash, otherwise = float(weights[inside].mean()), float(weights[~inside].mean())
    print(f"conservative weight: {in_crash:.3f} in crashes, {otherwise:.3f} otherwise")
    assert in_crash > otherwise + 0.05, (in_crash, otherwise)


async def test_mars_loses_less_than_the_vote_in_the_planted_crashes(runs) -> None:
    def crash_drawdown(result) -> float:
        worst = 0.0
        for day in CRASHES[1:]:
            start = to_ms(day)
            equity = result.equity[
                (result.equity.index >= start - DAY_MS)
                & (result.equity.index <= start + CRASH_DAYS * DAY_MS)
            ]
            worst = max(worst, max_drawdown(equity))
        return worst

    vote, mars = crash_drawdown(runs["vote"][0]), crash_drawdown(runs["mars"][0])
    print(f"worst crash drawdown: mars {mars:.4f}, vote {vote:.4f}")
    assert mars < vote, (mars, vote)


async def test_mars_and_its_manager_decide_nothing_from_the_future(cfg, market, bars, trained):
    """Rewrite every price after ``PERTURB_AFTER``: every target, controller weight, variant
    position (safety masks included) and gross exposure decided before it is the same."""

    def before(recording, result) -> tuple:
        notes = [
            n for n in recording.regime if n.ts < PERTURB_AFTER
        ]  # VariantWeights and GrossExposure
        weights = result.weights[result.weights.index < PERTURB_AFTER]
        return notes, weights

    base_result, base = await replay(
        cfg, mars_policy(trained, manager=True), driver_of(market, bars)
    )
    moved_result, moved = await replay(
        cfg, mars_policy(trained, manager=True), driver_of(market, bars, after=PERTURB_AFTER)
    )
    base_notes, base_weights = before(base, base_result)
    moved_notes, moved_weights = before(moved, moved_result)
    assert len(base_notes) > 500
    assert any(isinstance(n, GrossExposure) and n.exposure != 1.0 for n in base_notes)
    assert base_notes == moved_notes
    pd.testing.assert_frame_equal(base_weights, moved_weights)
    fits = [f for f in base.policy.fits if f["ts"] < PERTURB_AFTER]
    assert fits == [f for f in moved.policy.fits if f["ts"] < PERTURB_AFTER]
    # ... and the future did change what came after
    after = [n for n in base.regime if n.ts >= PERTURB_AFTER]
    assert after != [n for n in moved.regime if n.ts >= PERTURB_AFTER]


async def test_the_controller_ablation_keeps_the_uniform_mix(cfg, market, bars, trained):
    """``[mars.controller].fit = false``: every coin's weights stay the uniform mix over its
    variants, and the manager is still fitted."""
    controller = MARS.controller.model_copy(update={"fit": False})
    ablation = MARS.model_copy(update={"controller": controller})
    policy = mars_policy(trained, manager=True, mars=ablation)
    _, recording = await replay(cfg, policy, driver_of(market, bars))
    weights = [n for n in recording.regime if isinstance(n, VariantWeights)]
    assert len(weights) > 500
    uniform = 1.0 / len(MARS.names)
    assert {len(n.weights) for n in weights} == {len(MARS.names)}
    assert all(w == pytest.approx(uniform, abs=1e-12) for n in weights for _, w in n.weights)
    assert policy.fits and not any(fit["controller"]["fitted"] for fit in policy.fits)
    assert any(fit["manager"]["fitted"] for fit in policy.fits)
    assert any(isinstance(n, GrossExposure) and n.exposure != 1.0 for n in recording.regime)


class BarByBar:
    """A MARS policy without ``prepare``: its ensembles read the replay one bar at a time."""

    def __init__(self, policy: MarsPolicy) -> None:
        self.policy, self.name = policy, policy.name

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        return self.policy.decide(context)


async def test_a_prepared_replay_decides_as_the_ensembles_bar_by_bar(cfg, market, bars, trained):
    """``prepare`` computes every ensemble's steps in batched passes: every variant position,
    controller weight, gross exposure, fit, fill and valuation is the bar-by-bar replay's."""
    driver = driver_of(market, bars)
    prepared = mars_policy(trained, manager=True)
    fast_result, fast = await replay(cfg, prepared, driver)
    modules = list(prepared.sets[0].modules.values())
    assert all(m._plan is not None and m._plan.cursor == len(m._plan.bars) for m in modules)
    slow_result, slow = await replay(cfg, BarByBar(mars_policy(trained, manager=True)), driver)
    assert len(fast.regime) > 500
    assert fast.regime == slow.regime  # positions after the safety masks, weights, exposure
    assert fast.decisions == slow.decisions
    assert prepared.fits == slow.policy.policy.fits
    pd.testing.assert_frame_equal(fast_result.trades, slow_result.trades)
    pd.testing.assert_series_equal(fast_result.equity, slow_result.equity)


def test_an_ensemble_off_its_plan_catches_up_and_goes_on_as_bar_by_bar(market, bars, trained):
    """A bar the plan did not foresee: the ensemble rebuilds its state from the bars and
    metrics it read and decides that bar and the next ones as one that never planned."""
    frame = bars["BTC"][bars["BTC"]["open_time"] >= REPLAY_FROM].reset_index(drop=True)
    driver = ReplayDriver(
        {"BTC/USDT": frame},
        exchange="synthetic",
        timeframe="6h",
        metrics=with_known_at(market.metrics, 3_600_000),
    )
    planned = MarsModule(load_ensemble(trained["mars"]["BTC"]), "BTC/USDT", trend_days=20)
    plain = MarsModule(load_ensemble(trained["mars"]["BTC"]), "BTC/USDT", trend_days=20)
    assert prepare_modules([planned], driver) == 1 and not planned.fresh
    changed_at = 600
    steps: dict[str, list] = {"planned": [], "plain": []}
    for i, instant in enumerate(driver.instants()):
        for module, out in ((planned, steps["planned"]), (plain, steps["plain"])):
            for metric in instant.metrics:
                module.on_metric(metric)
            for bar in instant.bars:
                if i >= changed_at:  # from here on, bars the plan never saw
                    bar = bar._replace(close=bar.close * 1.01, high=bar.high * 1.01)
                out.append(module.on_bar(bar))
    assert planned._plan is None  # it left the plan
    same = [
        a.ts == b.ts
        and np.array_equal(a.positions, b.positions)
        and np.array_equal(a.dru, b.dru)
        and a.ready == b.ready
        for a, b in zip(steps["planned"], steps["plain"], strict=True)
    ]
    assert len(same) > changed_at + 100 and all(same)
    ready = [s for s in steps["plain"] if s.ready]
    assert len(ready) > 300 and len({tuple(s.positions) for s in ready}) > 1


def test_a_prepared_warm_up_leaves_the_policy_as_one_warmed_bar_by_bar(market, bars, trained):
    """The daemon's warm-up (``warm_up_on``) prepares a MARS policy's ensembles in batched
    passes; at the first live bars they leave the plan, and every target, variant position,
    controller weight and exposure equals a policy warmed one bar at a time."""
    steps = list(driver_of(market, bars).instants())
    warm = [s for s in steps if s.ts < DECIDE_FROM]
    live = [s for s in steps if s.ts >= DECIDE_FROM][:120]
    warm_bars = [b for s in warm for b in s.bars]
    warm_metrics = [m for s in warm for m in s.metrics]
    prepared = mars_policy(trained, manager=True)
    plain = mars_policy(trained, manager=True)
    for policy in (prepared, BarByBar(plain)):
        count = warm_up_on(
            policy, warm_bars, warm_metrics, decide_from=DECIDE_FROM, timeframe="6h", quote="USDT"
        )
        assert count == len(warm)
    modules = list(prepared.sets[0].modules.values())
    assert all(m._plan is not None and m._plan.cursor == len(m._plan.bars) for m in modules)
    outcomes = {}
    for name, policy in (("prepared", prepared), ("plain", plain)):
        account = Account("USDT", 1000.0)
        answers = []
        for instant in live:
            context = DecisionContext(instant, account)
            answers.append((policy.decide(context), list(context.notes)))
        outcomes[name] = answers
    assert all(m._plan is None for m in modules)  # each left its plan at the first live bar
    assert sum(1 for target, _ in outcomes["plain"] if target) > 100
    assert outcomes["prepared"] == outcomes["plain"]
