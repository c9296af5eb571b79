"""Closed bars over REST from the fake Binance: the daemon's fallback, backfill and catch-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pandas as pd
import pytest

from bot.events import Bar
from bot.feed.exchange import create_exchange
from bot.feed.live import fetch_closed_bars
from bot.timeframes import MINUTE_MS, to_ms
from tests.fakes.binance import FakeBinance, synthetic_candles

T0 = to_ms("2024-03-01T12:00:00")
KLINES = "/api/v3/klines"
BTC = "BTC/USDT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(now_ms=T0 + 10_000) as server:
        yield server


@pytest.fixture
async def exchange(fake: FakeBinance) -> AsyncIterator[Any]:
    ex = create_exchange(fake.exchange_config(), pro=True)
    ex.timeout_on_exit = 0  # ccxt sleeps 250 ms on close() for TLS; plain HTTP here
    yield ex
    await ex.close()


def minute(k: int, price: float = 100.0) -> list[float]:
    """A 1m candle opening ``k`` minutes after T0."""
    return [T0 + k * MINUTE_MS, price, price + 2, price - 1, price + 1, 10.0 + k]


def bar(symbol: str, candle: Sequence[float]) -> Bar:
    t = int(candle[0])
    return Bar(t + MINUTE_MS, "binance", symbol, "1m", t, *map(float, candle[1:]))


async def test_fetch_closed_bars_returns_closed_bars_from_since_only(
    fake: FakeBinance, exchange: Any
) -> None:
    frame = synthetic_candles(30, start_ms=T0 - 20 * MINUTE_MS, timeframe="1m")
    fake.set_candles("BTCUSDT", "1m", frame)
    fake.now_ms = T0 + 30_000  # the candle opened at T0 is still open

    bars = await fetch_closed_bars(
        exchange,
        exchange_name="binance",
        symbol=BTC,
        timeframe="1m",
        since_ms=T0 - 5 * MINUTE_MS - 1,
        now_ms=fake.now_ms,
    )

    expected = frame[(frame.open_time >= T0 - 5 * MINUTE_MS) & (frame.open_time < T0)]
    assert bars == [bar(BTC, row) for row in expected.itertuples(index=False, name=None)]
    assert all(b.ts == b.open_time + MINUTE_MS <= fake.now_ms for b in bars)


async def test_fetch_closed_bars_pages_through_a_long_outage(
    fake: FakeBinance, exchange: Any
) -> None:
    frame = synthetic_candles(2500, start_ms=T0 - 2500 * MINUTE_MS, timeframe="1m")
    fake.set_candles("BTCUSDT", "1m", frame)

    bars = await fetch_closed_bars(
        exchange, exchange_name="binance", symbol=BTC, timeframe="1m", since_ms=0, now_ms=T0
    )

    assert len(bars) == 2500
    assert fake.count(KLINES) == 3
    assert pd.Series([b.open_time for b in bars]).equals(frame.open_time)


async def test_fetch_closed_bars_trusts_the_exchange_clock_not_a_local_clock_running_ahead(
    fake: FakeBinance, exchange: Any
) -> None:
    fake.set_candles("BTCUSDT", "1m", synthetic_candles(6, start_ms=T0, timeframe="1m"))
    fake.now_ms = T0 + 5 * MINUTE_MS + 30_000  # the exchange: candle 5 is half-way

    bars = await fetch_closed_bars(
        exchange,
        exchange_name="binance",
        symbol=BTC,
        timeframe="1m",
        since_ms=T0,
        now_ms=T0 + 6 * MINUTE_MS + 1_000,  # the local clock, 31 s ahead: "candle 5 closed"
    )

    assert [b.open_time for b in bars] == [T0 + k * MINUTE_MS for k in range(5)]
    assert fake.count("/api/v3/time") == 1  # asked only for the candle with no successor
