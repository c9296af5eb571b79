"""The live stream's cleanup: closing it waits for the websocket watch, but never swallows a
cancellation of the task that closes it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from bot.feed.live import stream_closed_bars
from bot.timeframes import MINUTE_MS, to_ms

T0 = to_ms("2024-03-01T12:00:00")
BTC = "BTC/USDT"


class SlowToCancelExchange:
    """Just enough of a ccxt.pro exchange for the stream: REST from a list of candles, and a
    websocket watch that never delivers and takes a while to wind down when cancelled (as a
    socket closing over a slow network does)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.ohlcvs: dict[str, Any] = {}
        self.last_response_headers: dict[str, str] = {}
        self.candles = [[T0 + k * MINUTE_MS, 10.0, 11.0, 9.0, 10.5, 1.0] for k in range(10)]
        self.watches: list[asyncio.Task[Any]] = []
        self.winding_down = asyncio.Event()
        """Set when a cancelled watch starts winding down."""
        self.wound_down = asyncio.Event()
        """Set by the test to let it finish winding down."""

    async def fetch_time(self) -> int:
        return self.now_ms

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, params: dict[str, Any]
    ) -> list[list[float]]:
        opened = [c for c in self.candles if c[0] <= self.now_ms]
        return [c for c in opened if since <= c[0] <= params["until"]][:limit]

    async def watch_ohlcv_for_symbols(self, pairs: list[list[str]]) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.watches.append(task)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.winding_down.set()
            await self.wound_down.wait()
            raise


async def test_cancelling_the_close_of_the_stream_is_not_swallowed() -> None:
    exchange = SlowToCancelExchange(now_ms=T0 + 2 * MINUTE_MS + 30_000)
    stream = stream_closed_bars(
        exchange,
        exchange_name="binance",
        symbols=[BTC],
        timeframe="1m",
        now_ms=lambda: exchange.now_ms,
        backfill_since_ms={BTC: T0},
        close_grace_ms=0,
        poll_s=0.01,
    )
    try:
        first = [await anext(stream), await anext(stream)]
        assert [b.open_time for b in first] == [T0, T0 + MINUTE_MS]
        exchange.now_ms = T0 + 3 * MINUTE_MS + 1  # candle 2 closes while the watch is pending
        assert (await anext(stream)).open_time == T0 + 2 * MINUTE_MS
        assert len(exchange.watches) == 1 and not exchange.watches[0].done()

        closing = asyncio.create_task(stream.aclose())
        await exchange.winding_down.wait()  # the stream now waits for the watch to wind down
        closing.cancel()

        with pytest.raises(asyncio.CancelledError):
            await closing
    finally:
        exchange.wound_down.set()
        for watch in exchange.watches:
            with contextlib.suppress(asyncio.CancelledError):
                await watch


async def test_closing_the_stream_waits_for_the_watch_to_finish() -> None:
    exchange = SlowToCancelExchange(now_ms=T0 + 2 * MINUTE_MS + 30_000)
    stream = stream_closed_bars(
        exchange,
        exchange_name="binance",
        symbols=[BTC],
        timeframe="1m",
        now_ms=lambda: exchange.now_ms,
        backfill_since_ms={BTC: T0},
        close_grace_ms=0,
        poll_s=0.01,
    )
    await anext(stream)
    await anext(stream)
    exchange.now_ms = T0 + 3 * MINUTE_MS + 1
    await anext(stream)

    closing = asyncio.create_task(stream.aclose())
    await exchange.winding_down.wait()
    assert not closing.done()  # closing waits for the watch
    exchange.wound_down.set()
    await closing

    assert exchange.watches[0].cancelled()
