"""Portfolio (c) - four Crypto Modules (BTC, STORJ, BLZ, LINK) - replayed over two years of 6h
bars through the engine: bar by bar, batched (``PortfolioVote.prepare``), and the bare engine
with a 1/N policy, one run each in this process.

Uses a synthetic market with the paper's coin names: ``../shared/data`` does not hold two full
years of STORJ and BLZ (listed mid-2020) and is not read here. The modules are trained with a
small budget first, since replay speed does not depend on how good they are. A decision is one
module deciding at one bar close; the vote, risk gate, planner and simulated venue run at every
close too. Both CM replays include the modules' warm-up from 2019-01 (the replay reads the whole
stored history); module loading is timed apart. The script checks that the batched replay's
module decisions, trades and equity equal the bar-by-bar replay's.

Targets (issue 14): batched at least 10x faster than bar by bar, and within 2x of the bare
engine with 1/N (run first and last; the ratio uses the faster run).

Run: ``.venv/bin/python tests/benchmarks/bench_portfolio_replay.py``
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backtest.pipeline import RecordingPolicy, read_histories, replay_driver, train_modules
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
from strategies.crypto_module import CryptoModule
from strategies.portfolio import PortfolioVote

COINS = ("BTC", "STORJ", "BLZ", "LINK")
SMALL = DQNParams(total_env_steps=2_000, learning_starts=200, eval_interval=50)


class BarByBar:
    """A policy without ``prepare``: the replay calls its modules one bar at a time."""

    def __init__(self, policy: RecordingPolicy) -> None:
        self.policy, self.name = policy, policy.name

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        return self.policy.decide(context)


def vote(cfg: AppConfig, folders: Mapping[str, Path]) -> tuple[RecordingPolicy, float]:
    started = time.perf_counter()
    modules = [CryptoModule.load(folders[c], cfg.market.symbol(c)) for c in COINS]
    return RecordingPolicy(PortfolioVote(cfg.market.quote, modules)), time.perf_counter() - started


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
    print("data: a synthetic market (../shared/data lacks two years of STORJ and BLZ)")
    market = generate_market(list(COINS), to_ms("2019-01-01"), to_ms("2022-01-01"), seed=3)
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        await write_market(market, store, metrics)
        await dataset.resample_coins(cfg, store)
        histories = await read_histories(cfg, store, metrics, COINS)
        trained = train_modules(cfg, histories, (1,), cfg.training.models_dir)
        test = cfg.windows.test
        driver = await replay_driver(cfg, store, metrics, COINS, test.start_ms, test.end_ms)
    folders = {c: trained[c, 1] for c in COINS}
    closes = driver.decision_count

    gc.collect()  # every timed run starts with the same clean generations
    started = time.perf_counter()
    await run_backtest(cfg, EqualWeightRebalanced(COINS), driver, name="ew")
    engine_only = time.perf_counter() - started

    slow, load_slow = vote(cfg, folders)
    gc.collect()
    started = time.perf_counter()
    slow_run = await run_backtest(cfg, BarByBar(slow), driver, name="bar-by-bar")  # type: ignore[arg-type]
    bar_by_bar = time.perf_counter() - started

    fast, load_fast = vote(cfg, folders)
    gc.collect()
    started = time.perf_counter()
    prepared = fast.policy.prepare(driver)  # type: ignore[attr-defined]
    prepare = time.perf_counter() - started
    fast_run = await run_backtest(cfg, fast, driver, name="batched")  # its prepare: done above
    batched = time.perf_counter() - started

    # The bare engine again, last: the ratio uses the faster of its two runs (a first run in
    # a process can be slower; the shared machine's load varies).
    gc.collect()
    started = time.perf_counter()
    await run_backtest(cfg, EqualWeightRebalanced(COINS), driver, name="ew")
    engine_again = time.perf_counter() - started
    engine_first, engine_only = engine_only, min(engine_only, engine_again)

    same = (
        slow.decisions == fast.decisions
        and slow_run.trades.equals(fast_run.trades)
        and slow_run.equity.equals(fast_run.equity)
    )
    decisions = sum(1 for d in fast.decisions if d.ts >= test.start_ms)
    vote_ = fast.policy
    plans = [vote_.module(c)._plan for c in COINS]  # type: ignore[attr-defined]
    settled = sum(plan.settled for plan in plans if plan is not None)
    switches = sum(
        int((pd.Series([d.coin_weight for d in fast.decisions if d.coin == c]).diff() != 0).sum())
        - 1
        for c in COINS
    )
    print(f"portfolio (c) {', '.join(COINS)}: {closes:,} 6h closes over {test} (2 years)")
    print(
        f"{decisions:,} module decisions ({len(fast.decisions):,} with the warm-up from 2019-01), "
        f"{switches} position changes, {len(fast_run.trades)} fills"
    )
    print(
        f"engine only (1/N)  : {engine_only:6.2f} s  {closes / engine_only:>9,.0f} closes/s  "
        f"(the faster of {engine_first:.2f} s first and {engine_again:.2f} s last)"
    )
    print(
        f"CM vote bar by bar : {bar_by_bar:6.2f} s  {decisions / bar_by_bar:>9,.0f} decisions/s"
        f"  (+ {load_slow:.2f} s loading the modules)"
    )
    print(
        f"CM vote batched    : {batched:6.2f} s  {decisions / batched:>9,.0f} decisions/s"
        f"  ({prepare:.2f} s of it preparing {prepared} modules, {settled} near ties settled "
        f"bar by bar; + {load_fast:.2f} s loading)"
    )
    print(f"bar by bar / batched : {bar_by_bar / batched:5.1f}x  (target >= 10x)")
    print(f"batched / engine only: {batched / engine_only:5.2f}x  (target <= 2x)")
    print(f"batched == bar by bar (decisions, fills, equity): {same}")
    if not same:
        raise SystemExit("the batched replay differs from the bar-by-bar one")


if __name__ == "__main__":
    asyncio.run(main())
