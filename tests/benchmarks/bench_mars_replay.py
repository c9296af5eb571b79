"""Portfolio (c) - BTC, STORJ, BLZ, LINK - under ``mars+manager``, replayed over two years of 6h
bars: the ensembles bar by bar, prepared (``MarsPolicy.prepare``: every ensemble's steps in a
few batched passes), and the bare engine with a 1/N policy, one run each in this process.

A synthetic market with the paper's coin names (as ``bench_portfolio_replay``); the ensembles
are trained with a small budget first, since replay speed does not depend on how good they are.
Both MARS replays include the ensembles' warm-up from 2019-01 and the controller's and the
manager's fits. The script checks that the prepared replay's variant positions, controller
weights, exposures, fits, fills and equity equal the bar-by-bar replay's.

Last, the daemon's warm-up (``bot.live.warmup.warm_up_on``) over the same history, bar by bar
and prepared.

Run: ``.venv/bin/python tests/benchmarks/bench_mars_replay.py``
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backtest.pipeline import RecordingPolicy, mars_policy, train_mars_modules
from backtest.run import run_backtest
from bot.live.warmup import warm_up_on
from strategies.baselines import EqualWeightRebalanced
from tests.benchmarks.portfolio_c import COINS, BarByBar, portfolio_c


async def main() -> None:
    setup = await portfolio_c(train_mars_modules, "bench-mars-")
    cfg, driver, folders = setup.cfg, setup.driver, setup.folders
    test = cfg.windows.test
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

    # The daemon's warm-up on the same history (every close a warm-up close: no decision, no
    # fit): one network pass per bar against the prepared passes.
    closes_seen = list(driver.instants())
    history = (
        [b for step in closes_seen for b in step.bars],
        [m for step in closes_seen for m in step.metrics],
    )
    warm_ups = {}
    for label, wrap in (("bar by bar", BarByBar), ("prepared", lambda p: p)):
        warming = RecordingPolicy(mars_policy(cfg, folders, manager=True))
        gc.collect()
        started = time.perf_counter()
        warm_up_on(
            wrap(warming),  # type: ignore[arg-type]
            *history,
            decide_from=closes_seen[-1].ts + 1,
            timeframe=cfg.market.timeframe,
            quote=cfg.market.quote,
        )
        warm_ups[label] = time.perf_counter() - started

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
    fits = len(policy.fits)  # type: ignore[attr-defined]
    print(
        f"{steps:,} ensemble steps of 8 variants each, {len(fast_run.trades)} fills, "
        f"{fits} controller and manager fits"
    )
    print(f"engine only (1/N)   : {engine_only:6.2f} s")
    print(f"mars+manager bar by bar: {bar_by_bar:6.2f} s")
    print(
        f"mars+manager prepared  : {batched:6.2f} s  ({prepare:.2f} s of it preparing "
        f"{prepared} ensembles, {settled} near ties settled bar by bar)"
    )
    print(f"bar by bar / prepared : {bar_by_bar / batched:5.1f}x")
    print(f"prepared / engine only: {batched / engine_only:5.2f}x")
    print(f"prepared == bar by bar (positions, weights, exposure, fits, fills, equity): {same}")
    print(
        f"daemon warm-up over the same {len(closes_seen):,} closes: bar by bar "
        f"{warm_ups['bar by bar']:.2f} s, prepared {warm_ups['prepared']:.2f} s "
        f"({warm_ups['bar by bar'] / warm_ups['prepared']:.1f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
