"""Portfolio (c) - four Crypto Modules (BTC, STORJ, BLZ, LINK) - replayed over two years of 6h
bars through the engine: wall time and decisions per second.

Uses a synthetic market with the paper's coin names (two full years are not in ../shared/data
for STORJ and BLZ); the modules are trained with a small budget first, since replay speed does
not depend on how good they are. A decision is one module deciding at one bar close; the vote,
risk gate, planner and broker run at every close too. The same replay with the equal-weight
baseline is timed as the engine-only reference.

Run: ``.venv/bin/python tests/benchmarks/bench_portfolio_replay.py``
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from backtest.pipeline import backtest_vote, read_histories, replay_driver, train_modules
from backtest.run import run_backtest
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


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-portfolio-"))
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
    market = generate_market(list(COINS), to_ms("2019-01-01"), to_ms("2022-01-01"), seed=3)
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        await write_market(market, store, metrics)
        await dataset.resample_coins(cfg, store)
        histories = await read_histories(cfg, store, metrics, COINS)
        folders = train_modules(cfg, histories, (1,), cfg.training.models_dir)
        test = cfg.windows.test
        driver = await replay_driver(cfg, store, metrics, COINS, test.start_ms, test.end_ms)
    closes = driver.decision_count
    started = time.perf_counter()
    await run_backtest(cfg, EqualWeightRebalanced(COINS), driver, name="ew")
    engine_only = time.perf_counter() - started
    started = time.perf_counter()
    run = await backtest_vote(cfg, {c: folders[c, 1] for c in COINS}, driver)
    seconds = time.perf_counter() - started
    decisions = sum(1 for d in run.decisions if d.ts >= test.start_ms)
    print(f"portfolio (c) {', '.join(COINS)}: {closes:,} 6h closes over {test} (2 years)")
    print(
        f"CM vote replay       : {seconds:6.2f} s  {decisions / seconds:>9,.0f} decisions/s "
        f"({decisions:,} module decisions, warm-up from 2019-01 included in the time)"
    )
    print(f"engine only (1/N)    : {engine_only:6.2f} s  {closes / engine_only:>9,.0f} closes/s")
    print(f"CM vote / engine only: {seconds / engine_only:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
