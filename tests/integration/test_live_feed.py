"""Live candles from the fake Binance: closed bars over REST and the ccxt.pro kline stream.

The stream runs on stepped time: its ``sleep`` and ``monotonic`` are a :class:`SteppedTime` that
moves only when a test says so, and every wait is on an explicit event (a bar yielded, the
stream back at its wait after a pushed message, a reconnect sleep requested, a subscription
at the fake). A loaded machine makes these tests slower, never different.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pandas as pd
import pytest

from bot.events import Bar
from bot.feed.exchange import create_exchange
from bot.feed.live import fetch_closed_bars, stream_closed_bars
from bot.timeframes import MINUTE_MS, to_ms
from tests.fakes.binance import FakeBinance, synthetic_candles

T0 = to_ms("2024-03-01T12:00:00")
KLINES = "/api/v3/klines"
BTC, ETH = "BTC/USDT", "ETH/USDT"
POLL_S = 1.0
"""The stream's wait between polls, in stepped seconds (only a test's step ends it)."""
GUARD_S = 120.0
"""Only a guard against a hung test; nothing waits for time to pass."""


class SteppedTime:
    """Seconds for ``sleep``/``monotonic`` that pass only in :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits = 0
        """``sleep`` calls so far (the stream's polls and reconnect waits)."""
        self._sleepers: list[tuple[float, float, asyncio.Future[None]]] = []
        self._changed = asyncio.Condition()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, seconds, future)
        self._sleepers.append(entry)
        self.waits += 1
        async with self._changed:
            self._changed.notify_all()
        try:
            await future
        finally:
            self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time on and wake every sleeper whose time has come."""
        self.now += seconds
        for deadline, _, future in list(self._sleepers):
            if deadline <= self.now and not future.done():
                future.set_result(None)
        await asyncio.sleep(0)

    async def _until(self, condition: Callable[[], Any]) -> Any:
        async with asyncio.timeout(GUARD_S), self._changed:
            return await self._changed.wait_for(condition)

    async def waiting(self) -> None:
        """Return once the stream waits for its socket or its next poll (a cancelled poll, the
        one the socket just ended, does not count)."""
        await self._until(lambda: any(s == POLL_S and not f.done() for _, s, f in self._sleepers))

    async def next_wait(self, after: int) -> None:
        """Return once the stream started another wait since ``waits`` was ``after``."""
        await self._until(lambda: self.waits > after)

    async def reconnect_wait(self) -> float:
        """The seconds of the reconnect wait the stream is (or will be) in."""
        return await self._until(
            lambda: next((s for _, s, f in self._sleepers if s != POLL_S and not f.done()), None)
        )


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


class Collector:
    """Runs the stream in a task on stepped time and queues what it yields."""

    def __init__(self, stream: AsyncIterator[Bar], time: SteppedTime) -> None:
        self.time = time
        self.queue: asyncio.Queue[Bar] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[Bar]) -> None:
        async for item in stream:
            await self.queue.put(item)

    async def take(self, n: int) -> list[Bar]:
        """The next ``n`` bars (they must come: a stream that ends or hangs fails the test)."""
        async with asyncio.timeout(GUARD_S):
            return [await self.queue.get() for _ in range(n)]

    async def after(self, event: Awaitable[Any]) -> None:
        """Await ``event`` (a pushed kline, a step of time) once the stream waits, and return
        when the stream has handled it and waits again."""
        await self.time.waiting()
        mark = self.time.waits
        await event
        await self.time.next_wait(mark)
        assert not self.task.done() or self.task.exception() is None

    async def quiet_after(self, event: Awaitable[Any]) -> None:
        """Like :meth:`after`, then assert the stream yielded nothing."""
        await self.after(event)
        assert self.queue.empty(), f"unexpected bars: {list(self.queue._queue)}"  # type: ignore[attr-defined]

    async def tick(self, seconds: float = POLL_S) -> None:
        """Let ``seconds`` pass (at least one poll) and the stream handle it."""
        await self.after(self.time.advance(seconds))

    async def reconnect(self, fake: FakeBinance, *streams: str) -> None:
        """Let the stream's reconnect wait pass; return once it subscribed again."""
        await self.time.advance(await self.time.reconnect_wait())
        for name in streams:
            await fake.wait_subscribed(name, timeout=GUARD_S)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def stream(exchange: Any, fake: FakeBinance, **kw: Any) -> Collector:
    time = SteppedTime()
    params: dict[str, Any] = {
        "exchange_name": "binance",
        "symbols": [BTC, ETH],
        "timeframe": "1m",
        "now_ms": lambda: fake.now_ms,
        "poll_s": POLL_S,
        "reconnect_base_s": 0.01,
        "base_delay_s": 0.001,
        "close_grace_ms": 3_600_000,  # only the websocket decides closes in these tests
        "sleep": time.sleep,
        "monotonic": time.monotonic,
    }
    return Collector(stream_closed_bars(exchange, **(params | kw)), time)


async def subscribed(fake: FakeBinance, *streams: str) -> None:
    for name in streams:
        await fake.wait_subscribed(name, timeout=GUARD_S)


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


async def test_the_stream_yields_each_closed_bar_once_and_backfills_after_a_drop(
    fake: FakeBinance, exchange: Any
) -> None:
    history = synthetic_candles(5, start_ms=T0 - 5 * MINUTE_MS, timeframe="1m")
    fake.set_candles("BTCUSDT", "1m", history)
    feed = stream(exchange, fake, backfill_since_ms={BTC: T0 - 5 * MINUTE_MS})
    try:
        await subscribed(fake, "btcusdt@kline_1m", "ethusdt@kline_1m")

        # Candle 0 is forming: updates, then its final update (x=true); nothing is closed yet.
        await fake.push_kline("BTCUSDT", "1m", minute(0, 100), closed=False)
        first = await feed.take(5)  # BTC's five missed bars, over REST
        assert first == [bar(BTC, c) for c in history.itertuples(index=False, name=None)]
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(0, 101), closed=True))
        await feed.quiet_after(fake.push_kline("ETHUSDT", "1m", minute(0, 50), closed=False))

        # Candle 1 opens: candle 0 is closed, with its final values; ETH too once its 1 opens.
        fake.now_ms = T0 + MINUTE_MS + 500
        await fake.push_kline("BTCUSDT", "1m", minute(1, 102), closed=False)
        assert await feed.take(1) == [bar(BTC, minute(0, 101))]
        await fake.push_kline("ETHUSDT", "1m", minute(1, 51), closed=False)
        assert await feed.take(1) == [bar(ETH, minute(0, 50))]
        await feed.quiet_after(feed.time.advance(POLL_S))

        # The socket drops while candle 1 is forming; its last updates and candles 2-3 are
        # missed. The exchange keeps going: REST has their final values.
        klines_before = fake.count(KLINES)
        await fake.drop_websockets()
        fake.now_ms = T0 + 4 * MINUTE_MS + 500
        for k in range(1, 4):
            fake.upsert_candle("BTCUSDT", "1m", minute(k, 110 + k))
            fake.upsert_candle("ETHUSDT", "1m", minute(k, 60 + k))
        await feed.reconnect(fake, "btcusdt@kline_1m", "ethusdt@kline_1m")

        await fake.push_kline("BTCUSDT", "1m", minute(4, 120), closed=False)
        assert await feed.take(3) == [bar(BTC, minute(k, 110 + k)) for k in range(1, 4)]
        await fake.push_kline("ETHUSDT", "1m", minute(4, 70), closed=False)
        assert await feed.take(3) == [bar(ETH, minute(k, 60 + k)) for k in range(1, 4)]
        assert fake.count(KLINES) > klines_before
        assert len(fake.ws_paths) == 2 and all(p.startswith("/stream/ws") for p in fake.ws_paths)

        # Late or repeated updates of candles already published change nothing.
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(3, 999), closed=True))
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(4, 121), closed=False))

        # Back to normal: candle 4 closes when candle 5 opens, straight from the socket.
        fake.now_ms = T0 + 5 * MINUTE_MS + 500
        klines_before = fake.count(KLINES)
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(4, 122), closed=True))
        await fake.push_kline("BTCUSDT", "1m", minute(5, 123), closed=False)
        assert await feed.take(1) == [bar(BTC, minute(4, 122))]
        assert fake.count(KLINES) == klines_before
    finally:
        await feed.stop()


async def test_a_quiet_socket_does_not_hold_back_closed_bars(
    fake: FakeBinance, exchange: Any
) -> None:
    feed = stream(exchange, fake, symbols=[BTC], close_grace_ms=2_000)
    try:
        await subscribed(fake, "btcusdt@kline_1m")
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(0, 100), closed=False))

        # No further message arrives, but the clock passes candle 0's close plus the grace.
        fake.upsert_candle("BTCUSDT", "1m", minute(0, 105))
        fake.now_ms = T0 + MINUTE_MS + 1_000
        await feed.quiet_after(feed.time.advance(POLL_S))  # within the grace: not yet
        fake.now_ms = T0 + MINUTE_MS + 2_000
        await feed.time.advance(POLL_S)
        assert await feed.take(1) == [bar(BTC, minute(0, 105))]

        # The socket's late news about candle 0 does not publish it twice.
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(1, 106), closed=False))
    finally:
        await feed.stop()


async def test_a_permanent_error_ends_the_stream(fake: FakeBinance, exchange: Any) -> None:
    feed = stream(exchange, fake, symbols=["XRP/USDT"])
    with pytest.raises(Exception, match="XRP/USDT"):
        await asyncio.wait_for(feed.task, GUARD_S)


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


async def test_the_stream_waits_for_the_exchange_clock_when_the_local_clock_runs_ahead(
    fake: FakeBinance, exchange: Any
) -> None:
    feed = stream(
        exchange,
        fake,
        symbols=[BTC],
        close_grace_ms=2_000,
        now_ms=lambda: fake.now_ms + 30_000,  # the local clock runs 30 s ahead
    )
    try:
        await subscribed(fake, "btcusdt@kline_1m")
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(0, 100), closed=False))
        fake.upsert_candle("BTCUSDT", "1m", minute(0, 103))

        fake.now_ms = T0 + 40_000  # local T0+70s says candle 0 closed; the exchange does not
        await feed.quiet_after(feed.time.advance(POLL_S))

        fake.upsert_candle("BTCUSDT", "1m", minute(0, 105))
        fake.now_ms = T0 + MINUTE_MS + 2_000  # the exchange's close plus the grace
        await feed.time.advance(POLL_S)
        assert await feed.take(1) == [bar(BTC, minute(0, 105))]
    finally:
        await feed.stop()


async def test_the_stream_measures_the_exchange_clock_again_every_resync_s(
    fake: FakeBinance, exchange: Any
) -> None:
    feed = stream(exchange, fake, symbols=[BTC], resync_s=10.0)
    try:
        await subscribed(fake, "btcusdt@kline_1m")
        await feed.time.waiting()
        at_start = fake.count("/api/v3/time")
        for _ in range(25):  # 25 s of polls: a resync at 10 s and at 20 s
            await feed.tick()
        assert at_start >= 1 and fake.count("/api/v3/time") == at_start + 2
    finally:
        await feed.stop()


async def _reconnect_with_candles_missed(fake: FakeBinance, feed: Collector) -> None:
    """Candle 0 comes from the socket; then the socket drops while candles 1 and 2 happen, so
    after the reconnect only REST can vouch for them (the exchange has them)."""
    await subscribed(fake, "btcusdt@kline_1m")
    await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(0, 100), closed=False))
    fake.now_ms = T0 + MINUTE_MS + 500
    await fake.push_kline("BTCUSDT", "1m", minute(1, 101), closed=False)
    assert await feed.take(1) == [bar(BTC, minute(0, 100))]
    await fake.drop_websockets()
    fake.upsert_candle("BTCUSDT", "1m", minute(1, 111))
    fake.upsert_candle("BTCUSDT", "1m", minute(2, 112))
    fake.now_ms = T0 + 3 * MINUTE_MS + 500
    await feed.reconnect(fake, "btcusdt@kline_1m")


async def test_a_rest_gap_the_socket_proved_closed_is_asked_again_not_skipped(
    fake: FakeBinance, exchange: Any
) -> None:
    feed = stream(exchange, fake, symbols=[BTC], gap_patience_s=30.0)
    try:
        await _reconnect_with_candles_missed(fake, feed)
        klines_before = fake.count(KLINES)
        fake.inject(KLINES, 200, body=[], times=2)  # REST lags the socket: nothing there yet

        # Each wake-up by the socket after the backoff asks REST again; twice it has nothing.
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(3, 113), closed=False))
        await feed.tick()
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(3, 113), closed=False))
        await feed.tick()
        await fake.push_kline("BTCUSDT", "1m", minute(3, 113), closed=False)

        assert await feed.take(2) == [bar(BTC, minute(1, 111)), bar(BTC, minute(2, 112))]
        assert fake.count(KLINES) == klines_before + 3
    finally:
        await feed.stop()


async def test_a_gap_rest_never_fills_is_skipped_after_the_patience(
    fake: FakeBinance, exchange: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.feed.live")
    feed = stream(exchange, fake, symbols=[BTC], gap_patience_s=5.0)
    try:
        await _reconnect_with_candles_missed(fake, feed)
        fake.inject(KLINES, 200, body=[], times=None)  # REST never gets candles 1 and 2

        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(3, 113), closed=False))
        await feed.tick(6.0)  # past the patience
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(3, 113), closed=False))
        fake.now_ms = T0 + 4 * MINUTE_MS + 500
        await fake.push_kline("BTCUSDT", "1m", minute(4, 114), closed=False)

        assert await feed.take(1) == [bar(BTC, minute(3, 113))]  # from the socket
        assert "REST has no candle from 2024-03-01T12:01:00Z to 2024-03-01T12:02:00Z yet" in (
            caplog.text
        )
        assert "skipping the gap" in caplog.text
    finally:
        await feed.stop()


async def test_a_failing_rest_backfill_does_not_hold_up_other_symbols(
    fake: FakeBinance, exchange: Any
) -> None:
    history = synthetic_candles(5, start_ms=T0 - 5 * MINUTE_MS, timeframe="1m")
    fake.set_candles("BTCUSDT", "1m", history)
    fake.inject(KLINES, 503, times=None)  # BTC's backfill fails until the faults are cleared
    feed = stream(
        exchange,
        fake,
        backfill_since_ms={BTC: T0 - 5 * MINUTE_MS},
        base_delay_s=1.0,  # in-call retries would now hold the stream for 1+2+4+8+16 s
    )
    try:
        await subscribed(fake, "btcusdt@kline_1m", "ethusdt@kline_1m")
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(0, 100), closed=False))
        await feed.quiet_after(fake.push_kline("ETHUSDT", "1m", minute(0, 50), closed=False))
        fake.now_ms = T0 + MINUTE_MS + 500
        await fake.push_kline("ETHUSDT", "1m", minute(1, 51), closed=False)
        # ETH goes on while BTC backs off (no stepped second has passed: BTC still waits).
        assert await feed.take(1) == [bar(ETH, minute(0, 50))]

        fake.clear_faults()  # BTC's REST comes back: its backfill follows after its backoff
        await feed.quiet_after(fake.push_kline("BTCUSDT", "1m", minute(1, 102), closed=False))
        await feed.tick(2.0)  # past the backoff (1 s plus up to 25 %)
        await fake.push_kline("BTCUSDT", "1m", minute(1, 102), closed=False)
        expected = [bar(BTC, c) for c in history.itertuples(index=False, name=None)]
        assert await feed.take(5) == expected
        await feed.tick(2.0)  # candle 0 was closed, REST lacked it: asked again after a backoff
        await fake.push_kline("BTCUSDT", "1m", minute(1, 102), closed=False)
        assert await feed.take(1) == [bar(BTC, minute(0, 100))]
    finally:
        await feed.stop()
