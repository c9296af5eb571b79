"""Throughput of the event bus against a plain loop, in one process.

Rows are read once from a real ``market.db`` (synthetic candles). Then, over the same rows:
  plain   : a Python loop calling the handler with each row;
  bus     : a ``Bar`` built from each row and dispatched through ``EventBus.publish`` (async);
  bus+db  : the same, but streaming the rows out of SQLite with ``MarketStore.iter_bars``.
Prints events/s of each and the ratios. Target (issue 2): bus >= 300,000 events/s.

Run: ``.venv/bin/python tests/benchmarks/bench_bus.py [--rows N]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from bot.bus import EventBus
from bot.events import Bar
from bot.store import MarketStore
from bot.timeframes import HOUR_MS

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "LINK/USDT")


class Counter:
    """The trivial handler: counts bars and sums closes (so the work cannot be skipped)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    def on_bar(self, bar: Bar) -> None:
        self.count += 1
        self.total += bar.close

    def on_row(self, row: tuple) -> None:
        self.count += 1
        self.total += row[5]


async def fill_store(store: MarketStore, rows_per_symbol: int) -> None:
    rng = np.random.default_rng(0)
    for symbol in SYMBOLS:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, rows_per_symbol)))
        candles = [
            (i * HOUR_MS, c, c * 1.01, c * 0.99, c, 1.0) for i, c in enumerate(close.tolist())
        ]
        await store.upsert_candles("synthetic", symbol, "1h", candles)


async def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await MarketStore.open(Path(tmp) / "market.db")
        await fill_store(store, rows // len(SYMBOLS))
        stored = [
            (b.symbol, b.open_time, b.open, b.high, b.low, b.close, b.volume)
            async for b in store.iter_bars("synthetic", SYMBOLS, "1h")
        ]
        n = len(stored)

        plain = Counter()
        t0 = time.perf_counter()
        for row in stored:
            plain.on_row(row)
        t_plain = time.perf_counter() - t0

        handler = Counter()
        bus = EventBus()
        bus.subscribe(Bar, handler.on_bar)
        publish = bus.publish
        t0 = time.perf_counter()
        for symbol, open_time, o, h, lo, c, v in stored:
            await publish(
                Bar(open_time + HOUR_MS, "synthetic", symbol, "1h", open_time, o, h, lo, c, v)
            )
        t_bus = time.perf_counter() - t0

        streamed = Counter()
        bus2 = EventBus()
        bus2.subscribe(Bar, streamed.on_bar)
        t0 = time.perf_counter()
        async for bar in store.iter_bars("synthetic", SYMBOLS, "1h"):
            await bus2.publish(bar)
        t_db = time.perf_counter() - t0
        await store.close()

    assert plain.count == handler.count == streamed.count == n
    assert plain.total == handler.total == streamed.total
    print(f"rows: {n:,} ({len(SYMBOLS)} symbols)")
    print(f"plain loop        : {n / t_plain:>12,.0f} rows/s")
    print(f"bus (build+route) : {n / t_bus:>12,.0f} events/s   plain/bus = {t_bus / t_plain:.1f}x")
    print(f"bus + SQLite read : {n / t_db:>12,.0f} events/s   plain/bus+db = {t_db / t_plain:.1f}x")
    print(
        f"target >= 300,000 events/s through the bus: {'met' if n / t_bus >= 300_000 else 'MISSED'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().rows))
