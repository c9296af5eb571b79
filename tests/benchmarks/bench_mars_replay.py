"""Portfolio (c) - BTC, STORJ, BLZ, LINK - under ``mars+manager``, replayed over two years of 6h
bars: the ensembles bar by bar, prepared (``MarsPolicy.prepare``: every ensemble's steps in a
few batched passes), and the bare engine with a 1/N policy, one run each in this process.

A synthetic market with the paper's coin names (as ``bench_portfolio_replay``); the ensembles
are trained with a small budget first, since replay speed does not depend on how good they are.
Both MARS replays include the ensembles' warm-up from 2019-01 and the controller's and the
manager's fits. The script checks that the prepared replay's variant positions, controller
weights, exposures, fits, fills and equity equal the bar-by-bar replay's.

Run: ``.venv/bin/python tests/benchmarks/bench_mars_replay.py``
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backtest.pipeline import (
    RecordingPolicy,
    mars_policy,
    read_histories,
    replay_driver,
    train_mars_modules,
)
from backtest.run import run_backtest
from bot.engine.step import DecisionContext
from bot.feed import dataset
from bot.feed.synthetic import generate_market, write_market
from bot.store import MarketStore, MetricStore
from bot.timeframes import to_ms
from config.schema import (
    AppConfig,
    CryptoModuleParams,
    DataConfig,
    DateWindow,
    DQNParams,
    MarketConfig,
    TrainingConfig,
    WindowsConfig,
)
from strategies.baselines import EqualWeightRebalanced

COINS = ("BTC", "STORJ", "BLZ", "LINK")
SMALL = DQNParams(total_env_steps=2_000, learning_starts=200, eval_interval=50)


class BarByBar:
    """A policy without ``prepare``: the replay feeds its ensembles one bar at a time."""

    def __init__(self, policy: RecordingPolicy) -> None:
        self.policy, self.name = policy, policy.name

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        return self.policy.decide(context)


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-mars-"))
    windows = WindowsConfig(
        train=DateWindow(start="2019-07-01", end="2019-11-30"),
        validation=DateWindow(start="2019-12-01", end="2019-12-31"),
        test=DateWindow(start="2020-01-01", end="2021-12-31"),
    )
    cfg = AppConfig(
        data=DataConfig(dir=root / "data"),
        market=MarketConfig(coins=COINS, start="2019-01-01", end="2021-12-31"),
        windows=windows,
        agents=CryptoModuleParams(eam=SMALL.model_copy(update={"gamma": 0.0}), sam=SMALL),
        training=TrainingConfig(seeds=(1,), models_dir=root / "models"),
    )
    print("data: a synthetic market (../shared/data lacks two years of STORJ and BLZ)")
    market = generate_market(list(COINS), to_ms("2019-01-01"), to_ms("2022-01-01"), seed=3)
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        await write_market(market, store, metrics)
        await dataset.resample_coins(cfg, store)
        histories = await read_histories(cfg, store, metrics, COINS)
        trained = train_mars_modules(cfg, histories, (1,), cfg.training.models_dir)
        test = cfg.windows.test
        driver = await replay_driver(cfg, store, metrics, COINS, test.start_ms, test.end_ms)
    folders = {c: trained[c, 1] for c in COINS}
    closes = driver.decision_count

    gc.collect()  # every timed run starts with the same clean generations
    started = time.perf_counter()
    await run_backtest(cfg, EqualWeightRebalanced(COINS), driver, name="ew")
    engine_only = time.perf_counter() - started

    slow = RecordingPolicy(mars_policy(cfg, folders, manager=True))
    gc.collect()
    started = time.perf_counter()
    slow_run = await run_backtest(cfg, BarByBar(slow), driver, name="bar-by-bar")  # type: ignore[arg-type]
    bar_by_bar = time.perf_counter() - started

    fast = RecordingPolicy(mars_policy(cfg, folders, manager=True))
    gc.collect()
    started = time.perf_counter()
    prepared = fast.prepare(driver)  # type: ignore[attr-defined]
    prepare = time.perf_counter() - started
    fast_run = await run_backtest(cfg, fast, driver, name="prepared")  # prepared above
    batched = time.perf_counter() - started

    gc.collect()
    started = time.perf_counter()
    await run_backtest(cfg, EqualWeightRebalanced(COINS), driver, name="ew")
    engine_only = min(engine_only, time.perf_counter() - started)

    policy = fast.policy
    settled = sum(m.settled for s in policy.sets for m in s.modules.values())  # type: ignore[attr-defined]
    same = (
        slow.regime == fast.regime
        and slow.decisions == fast.decisions
        and slow.policy.fits == policy.fits  # type: ignore[attr-defined]
        and slow_run.trades.equals(fast_run.trades)
        and slow_run.equity.equals(fast_run.equity)
    )
    steps = sum(1 for n in fast.decisions if n.ts >= test.start_ms)
    print(f"portfolio (c) {', '.join(COINS)}: {closes:,} 6h closes over {test} (2 years)")
    print(f"{steps:,} ensemble steps of 8 variants each, {len(fast_run.trades)} fills")
    print(f"engine only (1/N)   : {engine_only:6.2f} s")
    print(f"mars+manager bar by bar: {bar_by_bar:6.2f} s")
    print(
        f"mars+manager prepared  : {batched:6.2f} s  ({prepare:.2f} s of it preparing "
        f"{prepared} ensembles, {settled} near ties settled bar by bar)"
    )
    print(f"bar by bar / prepared : {bar_by_bar / batched:5.1f}x")
    print(f"prepared / engine only: {batched / engine_only:5.2f}x")
    print(f"prepared == bar by bar (positions, weights, exposure, fits, fills, equity): {same}")


if __name__ == "__main__":
    asyncio.run(main())
