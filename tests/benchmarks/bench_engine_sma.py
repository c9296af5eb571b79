"""Our event engine against backtesting.py on the same bars, in one process.

An SMA(10)/SMA(50) long/flat strategy (long while SMA10 > SMA50, flat otherwise; orders decided at
a bar's close fill at the next bar's open; no fees, no slippage, whole units) over N synthetic
1-minute bars. Prints bars/s of each, the ratio, and both trade counts (they must be equal). Ours
runs twice:
as a user would write it (the policy declares the bars where it does not trade, and the engine
coasts through them) and with every bar stepped through the engine (the per-bar path).
Target (issue 14): ours >= 3x backtesting.py, peak memory no higher than backtesting.py's.

Needs the benchmark-only dependency ``backtesting`` (``pip install backtesting``).
Run: ``.venv/bin/python tests/benchmarks/bench_engine_sma.py [--bars 1000000]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd

from backtest.replay import ReplayDriver
from backtest.run import run_backtest
from bot.engine import DecisionContext
from bot.timeframes import MINUTE_MS
from config.schema import AppConfig, BrokerConfig, MarketConfig, MarketRulesConfig

FAST, SLOW = 10, 50
CASH = 10_000_000.0


def synthetic_minutes(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.0008, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.normal(0, 0.0004, n)) * close
    return pd.DataFrame(
        {
            "open_time": np.arange(n, dtype=np.int64) * MINUTE_MS,
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": np.full(n, 1.0),
        }
    )


class SmaCrossPolicy:
    """Long/flat on SMA(10) vs SMA(50) of closes.

    Like backtesting.py's ``init``, ``prepare`` computes the indicator for the whole replay
    before it starts (vectorised, causal: the rolling means at each close use closes up to it),
    and with it the closes where the position changes (starting flat). ``decide`` answers the
    order of its instant, if any. ``quiet_instants`` says where there is none, so the engine
    coasts between signals; :class:`SteppedSmaCross` declares nothing and is stepped at every
    bar (the engine's per-bar path, also measured).
    """

    name = "sma"

    def __init__(self, coin: str) -> None:
        self.coin = coin
        self.signals: dict[int, dict[str, float]] = {}
        self.changes = np.zeros(0, dtype=bool)

    def prepare(self, driver: ReplayDriver) -> None:
        times = driver.instant_times()
        closes = pd.Series(driver.closes_at(times)[f"{self.coin}/USDT"])
        fast, slow = closes.rolling(FAST).mean(), closes.rolling(SLOW).mean()
        long = ((fast > slow) & slow.notna()).to_numpy()  # flat until both means exist
        self.changes = long != np.r_[False, long[:-1]]
        self.signals = {
            ts: ({self.coin: 1.0, "USDT": 0.0} if is_long else {"USDT": 1.0})
            for ts, is_long in zip(
                times[self.changes].tolist(), long[self.changes].tolist(), strict=True
            )
        }

    def quiet_instants(self, driver: ReplayDriver) -> np.ndarray:
        return ~self.changes

    def decide(self, context: DecisionContext) -> dict[str, float] | None:
        return self.signals.get(context.ts)


class SteppedSmaCross(SmaCrossPolicy):
    """The same signals, no quiet instants declared: every bar is stepped."""

    quiet_instants = None  # type: ignore[assignment]


def run_ours(bars: pd.DataFrame, *, coasting: bool = True) -> tuple[float, int]:
    cfg = AppConfig(
        market=MarketConfig(coins=("SYN",), timeframe="1m", base_timeframe="1m"),
        broker=BrokerConfig(
            initial_cash=CASH,
            fee_rate=0.0,
            slippage_bps=0.0,
            default_rules=MarketRulesConfig(step_size=1.0, tick_size=1e-8, min_notional=0.0),
        ),
    )
    started = time.perf_counter()
    driver = ReplayDriver({"SYN/USDT": bars}, exchange="bench", timeframe="1m")
    policy = SmaCrossPolicy("SYN") if coasting else SteppedSmaCross("SYN")
    result = asyncio.run(run_backtest(cfg, policy, driver, name="sma"))
    seconds = time.perf_counter() - started
    entries = int((result.trades["side"] == "buy").sum())
    return seconds, entries


def run_backtesting_py(bars: pd.DataFrame) -> tuple[float, int]:
    from backtesting import Backtest, Strategy

    def sma(values: np.ndarray, n: int) -> np.ndarray:
        return pd.Series(values).rolling(n).mean().to_numpy()

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, FAST)
            self.slow = self.I(sma, self.data.Close, SLOW)

        def next(self) -> None:
            want_long = self.fast[-1] > self.slow[-1]
            if want_long and not self.position:
                self.buy()
            elif not want_long and self.position:
                self.position.close()

    frame = bars.rename(columns=str.capitalize).set_index(
        pd.to_datetime(bars["open_time"], unit="ms", utc=True).dt.tz_localize(None)
    )[["Open", "High", "Low", "Close", "Volume"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        backtest = Backtest(frame, SmaCross, cash=CASH, commission=0.0, finalize_trades=True)
        stats = backtest.run()
        seconds = time.perf_counter() - started
    return seconds, int(stats["# Trades"])


def peak_memory_mib(which: str, n: int) -> float:
    """Peak memory a run allocates (Python and numpy, through tracemalloc), in a process of its
    own so neither run sees the other's garbage."""
    code = "\n".join(
        (
            "import sys, tracemalloc",
            "sys.path.insert(0, 'tests/benchmarks')",
            "import bench_engine_sma as b",
            f"bars = b.synthetic_minutes({n})",
            "tracemalloc.start()",
            f"b.{which}(bars)",
            "print(tracemalloc.get_traced_memory()[1] / 2**20)",
        )
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(n: int, repeats: int) -> None:
    bars = synthetic_minutes(n)
    ours, stepped, theirs = [], [], []
    for _ in range(repeats):  # interleaved, best of each: the machine is shared and noisy
        gc.collect()  # each timed run starts with the same clean generations
        ours.append(run_ours(bars))
        gc.collect()
        stepped.append(run_ours(bars, coasting=False))
        gc.collect()
        theirs.append(run_backtesting_py(bars))
    ours_s, ours_trades = min(ours)
    stepped_s, stepped_trades = min(stepped)
    theirs_s, theirs_trades = min(theirs)
    print(
        f"bars: {n:,} (1-minute, synthetic), SMA({FAST})/SMA({SLOW}) long/flat, best of {repeats}"
    )
    for label, seconds, trades in (
        ("cryptorlpm engine", ours_s, ours_trades),
        ("  every bar stepped", stepped_s, stepped_trades),
        ("backtesting.py", theirs_s, theirs_trades),
    ):
        print(f"{label:<19}: {n / seconds:>10,.0f} bars/s  ({seconds:6.2f} s)  trades {trades}")
    print(f"ratio ours/backtesting.py: {theirs_s / ours_s:.2f}x   (target >= 3x)")
    print(f"  with every bar stepped (no quiet instants declared): {theirs_s / stepped_s:.2f}x")
    print(f"same number of trades: {ours_trades == theirs_trades == stepped_trades}")
    mine, other = peak_memory_mib("run_ours", n), peak_memory_mib("run_backtesting_py", n)
    print(
        f"peak memory of a run: ours {mine:.0f} MiB, backtesting.py {other:.0f} MiB "
        f"(ratio {mine / other:.2f}, target <= 1)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.bars, args.repeats)
