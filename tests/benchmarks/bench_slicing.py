"""What slicing saves under the simulated venue's square-root market impact, in one run.

The same policies replayed twice through the same engine and venue: large orders as single
market orders at the next open, then sliced over the interval (``[execution]``). Prints, per
policy, the market impact, fees and slippage paid, the impact per unit traded and the final
equity, and the ratios sliced / single. The market: 1h bars of a random walk with a thin book
(an all-in order is about a tenth of what one bar offers at once).

Run: ``.venv/bin/python tests/benchmarks/bench_slicing.py``
"""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd

from backtest.replay import ReplayDriver
from backtest.result import RunResult
from backtest.run import run_backtest
from bot.engine import DecisionContext
from bot.timeframes import HOUR_MS
from config.schema import AppConfig, BrokerConfig, ExecutionConfig, MarketConfig, MarketRulesConfig
from strategies.baselines import EqualWeightRebalanced, TrendFilter

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS


class Flipper:
    """All in, then all out, every 24 decisions (a signal that persists a day)."""

    name = "flipper"

    def __init__(self) -> None:
        self.count = 0

    def decide(self, context: DecisionContext) -> dict[str, float] | None:
        if not context.deciding:
            return None
        self.count += 1
        return {"BTC": 1.0} if (self.count // 24) % 2 == 0 else {}


def market(n: int = 24 * 365, seed: int = 7) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.006, n)))
    volume = rng.lognormal(np.log(20_000.0), 0.4, n)
    frame = pd.DataFrame(
        {
            "open_time": T0 + HOUR_MS * np.arange(n),
            "open": np.r_[100.0, close[:-1]],
            "high": close * 1.003,
            "low": close * 0.997,
            "close": close,
            "volume": volume,
        }
    )
    return {"BTC/USDT": frame}


def config(**execution: object) -> AppConfig:
    return AppConfig(
        market=MarketConfig(coins=("BTC",), timeframe="1h"),
        broker=BrokerConfig(
            initial_cash=10_000.0,
            default_rules=MarketRulesConfig(step_size=0.001, tick_size=0.01, min_notional=5.0),
        ),
        execution=ExecutionConfig(impact_coefficient=0.02, liquidity_window=0.05, **execution),
    )


async def main() -> None:
    driver = ReplayDriver(market(), exchange="bench", timeframe="1h")
    sliced_cfg = config(slice_above_volume_share=0.001, max_slices=4, schedule="decay")
    print("1h random walk, one year; impact k=0.02 on 5% of a bar's volume; 10 000 USDT")
    print(
        f"{'policy':<14}{'run':<8}{'impact':>10}{'fees':>10}{'slippage':>10}{'cost':>10}"
        f"{'bps':>8}{'equity':>12}"
    )
    for make in (
        Flipper,
        lambda: TrendFilter(("BTC",), "1h", 2),
        lambda: EqualWeightRebalanced(("BTC",)),
    ):
        runs = {}
        for label, cfg in (("single", config()), ("sliced", sliced_cfg)):
            runs[label] = await run_backtest(cfg, make(), driver, name=label)
        for label, run in runs.items():
            print(
                f"{make().name:<14}{label:<8}{run.impact_paid:>10.2f}{run.fees_paid:>10.2f}"
                f"{run.slippage_paid:>10.2f}{run.trading_cost:>10.2f}"
                f"{_bps(run):>8.1f}{run.final_equity:>12.2f}"
            )
        single, sliced = runs["single"], runs["sliced"]
        print(f"{'':<14}sliced / single cost per unit traded: {_bps(sliced) / _bps(single):.2f}")


def _bps(run: RunResult) -> float:
    """Trading cost per unit traded, in bps (the equity paths differ, so totals do not compare)."""
    traded = float(run.trades["notional"].sum())
    return 1e4 * run.trading_cost / traded if traded else float("nan")


if __name__ == "__main__":
    asyncio.run(main())
