"""The kline websocket against the fake Binance: every close published once, in order.

The stream runs on stepped time (a :class:`SteppedTime` moves only when a test says so: its
reconnect waits, its stall watchdog, its backoffs), and every wait is on an explicit state: the
fake's sockets (subscribed, closed, ponged), the stream's ``handled(n)`` (n messages received and
all handled), a bar in the queue. A loaded machine makes these tests slower, never different.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from bot.events import Bar
from bot.feed.exchange import create_exchange, spot_stream_url
from bot.feed.kline_stream import KlineStream, combined_stream_url, connect_options
from bot.feed.live import fetch_closed_bars
from bot.timeframes import MINUTE_MS, to_ms
from tests.fakes.binance import FakeBinance, synthetic_candles

T0 = to_ms("2024-03-01T12:00:00")
KLINES = "/api/v3/klines"
BTC, ETH = "BTC/USDT", "ETH/USDT"
STREAMS = ("btcusdt@kline_1m", "ethusdt@kline_1m")
GUARD_S = 60.0
"""Only a guard against a hung test; nothing waits for time to pass."""
STALL_S = 30.0
BACKOFF_MAX_S = 1.0
LONGEST_BACKOFF_S = 1.25 * BACKOFF_MAX_S
"""The cap plus ``backoff_delay``'s jitter (up to 25%)."""


class SteppedTime:
    """``sleep``/``monotonic`` whose seconds pass only in :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, future)
        self._sleepers.append(entry)
        self._changed.set()
        try:
            await future
        finally:
            self._sleepers.remove(entry)

    def waiting(self, at_most: float = math.inf) -> list[float]:
        """The remaining seconds of the sleeps in progress (those of at most ``at_most``)."""
        return [
            t - self.now for t, f in self._sleepers if not f.done() and 0 < t - self.now <= at_most
        ]

    async def advance(self, seconds: float) -> None:
        """Move time on and wake every sleeper whose time has come."""
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now and not future.done():
                future.set_result(None)
        await asyncio.sleep(0)


def minute(k: int, price: float = 100.0) -> list[float]:
    """A 1m candle opening ``k`` minutes after T0."""
    return [T0 + k * MINUTE_MS, price, price + 2, price - 1, price + 1, 10.0 + k]


def bar(symbol: str, candle: Sequence[float]) -> Bar:
    t = int(candle[0])
    return Bar(t + MINUTE_MS, "binance", symbol, "1m", t, *map(float, candle[1:]))


class Harness:
    """The fake, a stream on stepped time, and what the stream published."""

    def __init__(self, fake: FakeBinance, rest: Any, symbols: Sequence[str], **kw: Any) -> None:
        self.fake = fake
        self.time = SteppedTime()
        self.bars: asyncio.Queue[Bar] = asyncio.Queue()
        cfg = fake.exchange_config()
        base = spot_stream_url(cfg)
        assert base is not None
        url = combined_stream_url(base)

        async def backfill(symbol: str, since: int) -> list[Bar]:
            return await fetch_closed_bars(
                rest,
                exchange_name="binance",
                symbol=symbol,
                timeframe="1m",
                since_ms=since,
                now_ms=fake.now_ms,
                max_retries=0,
            )

        params: dict[str, Any] = {
            "exchange_name": "binance",
            "backfill": backfill,
            "on_bar": self.bars.put_nowait,
            "connect_options": connect_options(cfg, url),
            "stall_s": STALL_S,
            "reconnect_base_s": 0.5,
            "reconnect_max_s": BACKOFF_MAX_S,
            "gap_patience_s": 5.0,
            "sleep": self.time.sleep,
            "monotonic": self.time.monotonic,
        }
        ids = {s: s.replace("/", "") for s in symbols}
        self.stream = KlineStream(url, ids, "1m", **(params | kw))
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    def start(self, **start_at: int) -> None:
        for symbol, next_open in start_at.items():
            self.stream.start_at(symbol.replace("_", "/"), next_open)
        self.task = asyncio.create_task(self.stream.run())

    async def connected(self, connections: int = 1) -> None:
        """The stream has opened its ``connections``-th connection and handled its backfill."""
        await self.fake.wait_sockets(
            lambda: (
                self.fake.connections >= connections
                and all(self.fake.subscribers(s) for s in self.streams)
            ),
            GUARD_S,
        )
        async with asyncio.timeout(GUARD_S):
            while self.stream.connections < connections:  # the client's side of the handshake
                await asyncio.sleep(0.001)
        await self.settled()

    @property
    def streams(self) -> list[str]:
        return self.stream.streams

    async def push(self, symbol: str, candle: Sequence[float], closed: bool, **kw: Any) -> None:
        """Push a kline and return once the stream has handled it."""
        self.sent += await self.fake.push_kline(symbol, "1m", candle, closed, **kw)
        await self.settled()

    async def settled(self) -> None:
        async with asyncio.timeout(GUARD_S):
            await self.stream.handled(self.sent_total)

    @property
    def sent_total(self) -> int:
        return self.fake.kline_messages

    async def take(self, n: int) -> list[Bar]:
        async with asyncio.timeout(GUARD_S):
            return [await self.bars.get() for _ in range(n)]

    def quiet(self) -> None:
        assert self.bars.empty(), f"unexpected bars: {list(self.bars._queue)}"  # type: ignore[attr-defined]

    async def reconnect(self, connections: int) -> None:
        """Let the reconnect wait pass; return once connected again and caught up."""
        async with asyncio.timeout(GUARD_S):
            while self.stream.connected:  # the drop is still on its way to the client
                await asyncio.sleep(0.001)
            while self.fake.connections < connections:
                waits = self.time.waiting()  # the reconnect wait, once the client is in it
                if waits:
                    await self.time.advance(min(waits))
                else:
                    await asyncio.sleep(0.001)
        await self.connected(connections)

    async def stop(self) -> None:
        """Cancel the stream and wait for it to end (a guard: a stream that does not stop fails
        the test in a minute, not the run's 600 s per-test limit)."""
        assert self.task is not None
        self.task.cancel()
        async with asyncio.timeout(GUARD_S):
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(now_ms=T0 + 10_000) as server:
        yield server


@pytest.fixture
async def rest(fake: FakeBinance) -> AsyncIterator[Any]:
    exchange = create_exchange(fake.exchange_config())
    yield exchange
    await exchange.close()


@pytest.fixture
async def feed(fake: FakeBinance, rest: Any) -> AsyncIterator[Harness]:
    harness = Harness(fake, rest, [BTC, ETH])
    yield harness
    await harness.stop()


async def test_closes_come_from_the_socket_once_in_order_after_a_rest_backfill(
    fake: FakeBinance, feed: Harness
) -> None:
    history = synthetic_candles(5, start_ms=T0 - 5 * MINUTE_MS, timeframe="1m")
    fake.set_candles("BTCUSDT", "1m", history)
    feed.start(BTC_USDT=T0 - 5 * MINUTE_MS)
    await feed.connected()
    assert fake.ws_paths == ["/stream/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"]
    assert await feed.take(5) == [bar(BTC, c) for c in history.itertuples(index=False)]

    rest_calls = fake.count(KLINES)
    await feed.push("BTCUSDT", minute(0, 100), closed=False)
    await feed.push("BTCUSDT", minute(0, 101), closed=False)
    feed.quiet()
    fake.now_ms = T0 + MINUTE_MS + 200
    await feed.push("BTCUSDT", minute(0, 102), closed=True)
    await feed.push("ETHUSDT", minute(0, 50), closed=True)  # ETH starts with its first push
    assert await feed.take(2) == [bar(BTC, minute(0, 102)), bar(ETH, minute(0, 50))]
    await feed.push("BTCUSDT", minute(0, 102), closed=True)  # a duplicate push
    await feed.push("BTCUSDT", minute(1, 103), closed=False)
    feed.quiet()
    assert fake.count(KLINES) == rest_calls  # nothing asked over REST
    assert feed.stream.counts(BTC) == (1, 5)


async def test_a_drop_mid_candle_loses_and_repeats_nothing(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0, ETH_USDT=T0)
    await feed.connected()
    await feed.push("BTCUSDT", minute(0, 100), closed=False)
    fake.now_ms = T0 + MINUTE_MS + 100
    await feed.push("BTCUSDT", minute(0, 101), closed=True)
    await feed.push("ETHUSDT", minute(0, 50), closed=True)
    assert await feed.take(2) == [bar(BTC, minute(0, 101)), bar(ETH, minute(0, 50))]
    await feed.push("BTCUSDT", minute(1, 110), closed=False)

    # The socket drops while candle 1 forms; candles 1 and 2 close while it is down.
    await fake.drop_websockets()
    for k in (1, 2):
        fake.upsert_candle("BTCUSDT", "1m", minute(k, 111 + k))
        fake.upsert_candle("ETHUSDT", "1m", minute(k, 51 + k))
    fake.now_ms = T0 + 3 * MINUTE_MS + 100
    await feed.reconnect(2)
    got = await feed.take(4)
    assert sorted(got, key=lambda b: (b.symbol, b.ts)) == [
        bar(BTC, minute(1, 112)),
        bar(BTC, minute(2, 113)),
        bar(ETH, minute(1, 52)),
        bar(ETH, minute(2, 53)),
    ]

    # The late final push of candle 2 (a message the exchange queued before the drop) and the
    # socket's next candles: only the new ones are published.
    await feed.push("BTCUSDT", minute(2, 113), closed=True, store=False)
    fake.now_ms = T0 + 4 * MINUTE_MS + 100
    await feed.push("BTCUSDT", minute(3, 114), closed=True)
    assert await feed.take(1) == [bar(BTC, minute(3, 114))]
    feed.quiet()
    assert feed.stream.drops == 1


async def test_binance_closing_the_connection_after_24_hours_loses_no_close(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    await feed.push("BTCUSDT", minute(0, 100), closed=False)
    # 24 hours on the exchange's clock later, Binance closes the connection exactly at a
    # close, before that candle's final push.
    fake.now_ms += 24 * 3_600_000
    fake.upsert_candle("BTCUSDT", "1m", minute(0, 101))
    assert await fake.expire_websockets() == 1
    fake.now_ms = T0 + 24 * 3_600_000 + MINUTE_MS
    await feed.reconnect(2)
    assert await feed.take(1) == [bar(BTC, minute(0, 101))]
    assert fake.count(KLINES) >= 1


async def test_the_stream_renews_its_connection_before_the_24_hour_limit(
    fake: FakeBinance, rest: Any
) -> None:
    feed = Harness(fake, rest, [BTC], max_age_s=3600.0, stall_s=7200.0)
    try:
        feed.start(BTC_USDT=T0)
        await feed.connected()
        await feed.time.advance(3600.0)  # the watchdog renews the connection
        await feed.reconnect(2)
        fake.now_ms = T0 + MINUTE_MS + 100
        await feed.push("BTCUSDT", minute(0, 104), closed=True)
        assert await feed.take(1) == [bar(BTC, minute(0, 104))]
        assert feed.stream.stalls == 0 and feed.stream.drops == 1
    finally:
        await feed.stop()


async def test_a_stalled_stream_is_taken_as_dropped_and_its_closes_come_over_rest(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0, ETH_USDT=T0)
    await feed.connected()
    await feed.push("BTCUSDT", minute(0, 100), closed=False)
    fake.stall_websockets()  # the connection stays open, and silent
    fake.now_ms = T0 + 2 * MINUTE_MS + 100
    for k in (0, 1):
        await feed.push("BTCUSDT", minute(k, 120 + k), closed=True)  # sent to no one
        fake.upsert_candle("ETHUSDT", "1m", minute(k, 60 + k))
    feed.quiet()

    await feed.time.advance(STALL_S)  # the watchdog: silent for stall_s
    await feed.reconnect(2)
    got = await feed.take(4)
    assert [b for b in got if b.symbol == BTC] == [bar(BTC, minute(k, 120 + k)) for k in (0, 1)]
    assert [b for b in got if b.symbol == ETH] == [bar(ETH, minute(k, 60 + k)) for k in (0, 1)]
    assert feed.stream.stalls == 1


async def test_duplicate_and_out_of_order_pushes_publish_each_close_once_in_order(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    fake.upsert_candle("BTCUSDT", "1m", minute(0, 100))
    fake.now_ms = T0 + 2 * MINUTE_MS + 100
    # Candle 1's final push overtakes candle 0's: candle 0 is fetched over REST first.
    await feed.push("BTCUSDT", minute(1, 101), closed=True)
    assert await feed.take(2) == [bar(BTC, minute(0, 100)), bar(BTC, minute(1, 101))]
    await feed.push("BTCUSDT", minute(0, 100), closed=True)  # the late one
    await feed.push("BTCUSDT", minute(1, 101), closed=True)  # and a duplicate
    await feed.push("BTCUSDT", minute(2, 102), closed=False)
    feed.quiet()


async def test_a_gap_on_the_socket_is_backfilled_over_rest(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    fake.now_ms = T0 + MINUTE_MS + 100
    await feed.push("BTCUSDT", minute(0, 100), closed=True)
    assert await feed.take(1) == [bar(BTC, minute(0, 100))]
    for k in (1, 2):  # never pushed: only REST has them
        fake.upsert_candle("BTCUSDT", "1m", minute(k, 100 + k))
    fake.now_ms = T0 + 4 * MINUTE_MS + 100
    await feed.push("BTCUSDT", minute(3, 103), closed=True)
    assert await feed.take(3) == [bar(BTC, minute(k, 100 + k)) for k in (1, 2, 3)]
    assert feed.stream.counts(BTC) == (1, 3)  # REST brought the gap and the close after it


async def test_a_close_flag_before_the_exchange_clock_reached_the_close_is_not_trusted(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    fake.now_ms = T0 + 30_000  # candle 0 half-way on the exchange's clock
    await feed.push("BTCUSDT", minute(0, 100), closed=True)
    feed.quiet()
    fake.upsert_candle("BTCUSDT", "1m", minute(0, 105))
    fake.now_ms = T0 + MINUTE_MS + 100
    await feed.push("BTCUSDT", minute(1, 106), closed=False)  # candle 1 opened
    assert await feed.take(1) == [bar(BTC, minute(0, 105))]  # the final values, from REST


async def test_a_bad_candle_on_the_socket_comes_over_rest_instead(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    fake.now_ms = T0 + MINUTE_MS + 100
    fake.upsert_candle("BTCUSDT", "1m", minute(0, 100))
    broken = [T0, 100.0, 90.0, 99.0, 101.0, 1.0]  # high below open and close
    await feed.push("BTCUSDT", broken, closed=True, store=False)
    assert await feed.take(1) == [bar(BTC, minute(0, 100))]


async def test_pings_are_answered_with_pongs(fake: FakeBinance, feed: Harness) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    assert await fake.ping_websockets() == 1
    await fake.wait_sockets(lambda: fake.pongs == 1, GUARD_S)


async def test_a_gap_rest_never_fills_is_skipped_after_the_patience(
    fake: FakeBinance, feed: Harness
) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    fake.inject(KLINES, 200, body=[], times=None)  # the exchange lost candles 0 and 1
    fake.now_ms = T0 + 3 * MINUTE_MS + 100
    sent = await fake.push_kline("BTCUSDT", "1m", minute(2, 102), closed=True)
    assert sent == 1
    async with asyncio.timeout(GUARD_S):  # asked again with backoff until the patience ends
        while True:
            # Only the backoffs pass: time stands still while a request is in flight, so the
            # stall watchdog (30 s) never fires here, however slow the machine.
            waits = feed.time.waiting(at_most=LONGEST_BACKOFF_S)
            if not feed.bars.empty():
                break
            if waits:
                await feed.time.advance(min(waits))
            else:
                await asyncio.sleep(0.001)
    assert await feed.take(1) == [bar(BTC, minute(2, 102))]
    assert fake.count(KLINES) >= 2


async def test_a_permanent_error_ends_the_stream(fake: FakeBinance, rest: Any) -> None:
    feed = Harness(fake, rest, ["XRP/USDT"])
    fake.now_ms = T0 + 2 * MINUTE_MS  # a backfill is due at once, for a symbol REST refuses
    feed.start(XRP_USDT=T0)
    with pytest.raises(Exception, match="XRP"):
        await asyncio.wait_for(feed.task, GUARD_S)  # type: ignore[arg-type]


async def test_stopping_the_stream_closes_its_connection(fake: FakeBinance, feed: Harness) -> None:
    feed.start(BTC_USDT=T0)
    await feed.connected()
    await feed.stop()
    await fake.wait_sockets(lambda: fake.subscribers("btcusdt@kline_1m") == 0, GUARD_S)
    assert feed.task is not None and feed.task.cancelled()
