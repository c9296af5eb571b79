"""Stopping the kline stream while its connection closes: the stream ends, it never reconnects.

The race CI hit: the stall watchdog closes a silent socket, the reader waits for the watchdog to
finish, and the daemon stops the stream at that moment. The reader used to swallow that
cancellation with the watchdog's own and went on to reconnect, so stopping never returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bot.events import Bar
from bot.feed import kline_stream
from bot.feed.kline_stream import KlineStream

GUARD_S = 10.0
"""Only a guard against a hung test; nothing waits for time to pass."""


class ClosingSocket:
    """A connection that sends nothing and whose close handshake finishes only when released,
    even if the closer is cancelled meanwhile (as a real close completes its handshake)."""

    def __init__(self) -> None:
        self.close_code: int | None = None
        self.reading_ended = asyncio.Event()
        self.release = asyncio.Event()
        self._closed = asyncio.Event()

    def __aiter__(self) -> ClosingSocket:
        return self

    async def __anext__(self) -> str:
        await self._closed.wait()
        self.reading_ended.set()
        raise StopAsyncIteration

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code
        self._closed.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            await self.release.wait()
            raise


async def test_a_stop_while_the_watchdog_closes_the_socket_ends_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sockets: list[ClosingSocket] = []
    now = [0.0]

    @asynccontextmanager
    async def connect(url: str, **options: Any) -> AsyncIterator[ClosingSocket]:
        sockets.append(ClosingSocket())
        yield sockets[-1]

    async def sleep(seconds: float) -> None:  # time jumps: every wait is over at once
        now[0] += seconds
        await asyncio.sleep(0)

    def on_bar(bar: Bar) -> None:
        raise AssertionError(f"no bar expected, got {bar}")

    async def backfill(symbol: str, since: int) -> list[Bar]:
        return []

    monkeypatch.setattr(kline_stream, "connect", connect)
    stream = KlineStream(
        "ws://127.0.0.1:1/stream",
        {"BTC/USDT": "BTCUSDT"},
        "1m",
        exchange_name="binance",
        backfill=backfill,
        on_bar=on_bar,
        stall_s=30.0,
        sleep=sleep,
        monotonic=lambda: now[0],
    )
    task = asyncio.create_task(stream.run())
    async with asyncio.timeout(GUARD_S):
        while not sockets:
            await asyncio.sleep(0)
        socket = sockets[0]
        await socket.reading_ended.wait()  # silent for 30 s: the watchdog is closing it
        task.cancel()  # the reader now waits for the watchdog; the daemon stops the stream
        socket.release.set()
        await asyncio.wait({task})
    assert task.cancelled()
    assert socket.close_code == 1000
    assert len(sockets) == 1  # it did not reconnect
