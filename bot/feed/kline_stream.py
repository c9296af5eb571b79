"""Binance's kline websocket as the daemon's bar source: every closed candle once, in order.

One connection carries every coin: the combined stream
``<ws>/stream?streams=btcusdt@kline_15m/ethusdt@kline_15m``. Binance pushes each candle's updates
about every two seconds, and a last one with ``x: true`` once it closed. Why not ccxt.pro's
``watch_ohlcv``: it drops that flag (and the event time), so a close had to be inferred from
the next candle or from a clock; it pings and times out on its own wall-clock timers, and it
cannot be told to drop a silent connection. The ``websockets`` package (already a dependency)
gives all of it in a few lines, and a message becomes a plain tuple, never a frame.

When is a candle closed? When the exchange says so on its own clock: ``x`` is true **and** the
message's event time ``E`` has reached the candle's close. Anything the socket cannot vouch
for comes over REST (:data:`Backfill`, which also decides closes on the exchange's clock):

- after every (re)connection, from each symbol's cursor up to now: candles missed while the
  socket was down, or whose last update straddled the reconnection;
- a closed candle that arrives ahead of the cursor (a gap, an out-of-order push): the candles
  between are fetched first, then it is published;
- a candle that opens while the one before it never got its ``x: true`` (a lost message).

Each symbol has a cursor, the open time of the next bar to publish, that only moves forward:
duplicates and late pushes of candles already published are dropped, and each symbol's
messages are handled in arrival order by its own worker, so a REST backfill of one coin never
holds up another.

The connection: Binance pings every 20 s and closes a connection that does not answer within a
minute (``websockets`` answers pings by itself); it closes every connection after 24 h (the
stream reconnects before that, after ``max_age_s``); a connection with no message for
``stall_s`` is taken for dead and replaced. Reconnections back off exponentially from
``reconnect_base_s`` to ``reconnect_max_s``. All waiting goes through the injected ``sleep``
and ``monotonic``, so tests step time themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect

from bot.events import Bar
from bot.feed.exchange import describe_error, is_temporary
from bot.feed.retry import backoff_delay
from bot.feed.validation import candle_problem
from bot.tasks import stop_task
from bot.timeframes import CandleGrid, ms_to_iso
from config.schema import ExchangeConfig

log = logging.getLogger(__name__)

Backfill = Callable[[str, int], Awaitable[list[Bar]]]
"""``backfill(symbol, since_open_ms)``: the symbol's bars from that open time up to the newest
one closed on the exchange's clock, over REST, in order (ccxt's error when it fails)."""

_RESYNC = object()
"""Queued for every symbol at each (re)connection: catch up over REST from the cursor."""


@dataclass
class _Series:
    symbol: str
    stream: str
    next_open: int | None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    websocket_bars: int = 0
    rest_bars: int = 0
    last_bar: Bar | None = None


@dataclass(frozen=True)
class StreamHealth:
    """What :meth:`KlineStream.health` says about the connection."""

    connected: bool
    connections: int
    drops: int
    stalls: int
    messages: int
    silent_s: float | None
    """Seconds since the last message (None before the first)."""


class KlineStream:
    """Closed bars of ``symbols`` (market symbol -> exchange id, ``BTC/USDT`` -> ``BTCUSDT``)
    from the combined kline stream at ``url`` (see the module docstring).

    Each closed bar goes to ``on_bar`` once, in open-time order per symbol. Call
    :meth:`start_at` for a symbol to begin at a given open time (the daemon passes the bar after
    its newest stored one); a symbol without it starts with the candle in progress. Run
    :meth:`run` in a task; cancel it to stop.
    """

    def __init__(
        self,
        url: str,
        symbols: Mapping[str, str],
        timeframe: str,
        *,
        exchange_name: str,
        backfill: Backfill,
        on_bar: Callable[[Bar], None],
        connect_options: Mapping[str, Any] | None = None,
        stall_s: float = 30.0,
        max_age_s: float = 23 * 3600.0,
        reconnect_base_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        gap_patience_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not symbols:
            raise ValueError("a kline stream needs at least one symbol")
        self.url = url
        self.timeframe = timeframe
        self.grid = CandleGrid(timeframe)
        self.exchange_name = exchange_name
        self.backfill = backfill
        self.on_bar = on_bar
        self.connect_options = dict(connect_options or {})
        self.stall_s = stall_s
        self.max_age_s = max_age_s
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_max_s = reconnect_max_s
        self.gap_patience_s = gap_patience_s
        self.sleep = sleep
        self.monotonic = monotonic
        self._series = {
            symbol: _Series(symbol, f"{ident.lower()}@kline_{timeframe}", None)
            for symbol, ident in symbols.items()
        }
        self._by_id = {ident.upper(): self._series[symbol] for symbol, ident in symbols.items()}
        self.connected = False
        self.connections = 0
        self.drops = 0
        self.stalls = 0
        self.messages = 0
        self._last_message: float | None = None
        self._closing_why = ""
        self._seen = asyncio.Event()

    @property
    def streams(self) -> list[str]:
        """The stream names subscribed (``btcusdt@kline_1m``)."""
        return [series.stream for series in self._series.values()]

    def start_at(self, symbol: str, next_open: int) -> None:
        """Publish ``symbol``'s bars from the open time ``next_open`` on (before :meth:`run`)."""
        self._series[symbol].next_open = self.grid.ceil(next_open)

    def health(self) -> StreamHealth:
        """The connection's state now."""
        silent = None if self._last_message is None else self.monotonic() - self._last_message
        return StreamHealth(
            self.connected, self.connections, self.drops, self.stalls, self.messages, silent
        )

    def counts(self, symbol: str) -> tuple[int, int]:
        """Bars of ``symbol`` published from the websocket and from REST so far."""
        series = self._series[symbol]
        return series.websocket_bars, series.rest_bars

    async def run(self) -> None:
        """Connect, publish, reconnect, forever (until cancelled). A permanent REST error (a
        bad symbol) ends it with that error; every other failure is retried."""
        tasks = [asyncio.ensure_future(self._work(series)) for series in self._series.values()]
        tasks.append(asyncio.ensure_future(self._connect_forever()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            # Their own outcome is ignored; a cancellation of this task while waiting is not.
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the connection ---------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        url = f"{self.url}?streams={'/'.join(self.streams)}"
        failures = 0
        while True:
            opened: float | None = None
            reason = ""
            try:
                async with connect(url, **self._options()) as ws:
                    opened = self.monotonic()
                    self._on_open()
                    reason = await self._read(ws, opened)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, TLS, handshake: all worth a retry
                reason = _describe(exc)
            finally:
                self.connected = False
            lasted = 0.0 if opened is None else self.monotonic() - opened
            if opened is not None:
                self.drops += 1
            failures = 1 if lasted >= self.reconnect_max_s else failures + 1
            delay = backoff_delay(failures, self.reconnect_base_s, max_delay_s=self.reconnect_max_s)
            log.warning(
                "kline stream %s (%s); reconnecting in %.1f s (attempt %d)",
                "lost" if opened is not None else "cannot connect",
                reason,
                delay,
                failures,
            )
            await self.sleep(delay)

    def _options(self) -> dict[str, Any]:
        # Pings are Binance's (answered by the library); liveness is judged by the messages.
        options: dict[str, Any] = {
            "ping_interval": None,
            "close_timeout": 2.0,
            "open_timeout": 10.0,
            "max_queue": None,
            "proxy": None,
        }
        return options | self.connect_options

    def _on_open(self) -> None:
        self.connected = True
        self.connections += 1
        self._last_message = self.monotonic()
        log.info("kline stream connected: %s", ", ".join(self.streams))
        for series in self._series.values():
            series.queue.put_nowait(_RESYNC)

    async def _read(self, ws: Any, opened: float) -> str:
        """Hand every message to its symbol until the connection ends; returns why it ended."""
        self._closing_why = ""
        watchdog = asyncio.ensure_future(self._watch(ws, opened))
        try:
            async for message in ws:
                self._last_message = self.monotonic()
                self.messages += 1
                self._dispatch(message)
                self._seen.set()
            reason = f"closed by the exchange, code {ws.close_code}"
        except websockets.ConnectionClosed as exc:
            reason = f"connection closed: {exc}"
        finally:
            await stop_task(watchdog)
        return self._closing_why or reason

    async def _watch(self, ws: Any, opened: float) -> None:
        """Close ``ws`` when it is silent for ``stall_s`` or older than ``max_age_s``."""
        while True:
            now = self.monotonic()
            last = self._last_message if self._last_message is not None else opened
            silent, age = now - last, now - opened
            if silent >= self.stall_s:
                self.stalls += 1
                self._closing_why = f"no message for {silent:.0f} s: taken as dropped"
                await ws.close(code=1000, reason="stalled")
                return
            if age >= self.max_age_s:
                self._closing_why = (
                    f"open for {age / 3600:.1f} h: renewed before Binance's 24 h limit"
                )
                await ws.close(code=1000, reason="renewing")
                return
            await self.sleep(min(self.stall_s - silent, self.max_age_s - age))

    def _dispatch(self, text: str | bytes) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            log.warning("kline stream: unreadable message %.100r", text)
            return
        data = payload.get("data", payload) if isinstance(payload, dict) else None
        kline = data.get("k") if isinstance(data, dict) else None
        if not isinstance(kline, dict) or kline.get("i") != self.timeframe:
            return  # a subscription answer, another stream's event
        series = self._by_id.get(str(kline.get("s", "")).upper())
        if series is None:
            return
        try:
            t = int(kline["t"])
            row = (t, kline["o"], kline["h"], kline["l"], kline["c"], kline["v"])
            event_ms = int(data.get("E", 0))
        except (KeyError, TypeError, ValueError):
            log.warning("kline stream: malformed kline %.200r", kline)
            return
        series.queue.put_nowait((t, kline.get("x") is True, event_ms, row))

    # -- each symbol ------------------------------------------------------------------------

    async def handled(self, messages: int = 0) -> None:
        """Return once at least ``messages`` messages arrived and everything that arrived is
        handled (published, or dropped): an explicit point for tests and benchmarks to wait on."""
        while self.messages < messages:
            self._seen.clear()
            await self._seen.wait()
        for series in self._series.values():
            await series.queue.join()

    async def _work(self, series: _Series) -> None:
        while True:
            item = await series.queue.get()
            try:
                await self._handle(series, item)
            finally:
                series.queue.task_done()

    async def _handle(self, series: _Series, item: Any) -> None:
        step = self.grid.step
        if item is _RESYNC:
            if series.next_open is not None:
                await self._catch_up(series, until_open=None)
            return
        t, closed, event_ms, row = item
        if series.next_open is None:
            series.next_open = t  # no start given: begin with this candle
        if t < series.next_open:
            return  # published already: a duplicate or a late push
        confirmed = closed and event_ms >= t + step - 1
        if confirmed:
            problem = candle_problem(row, self.grid)
            if problem is not None:
                log.warning(
                    "%s %s: bad candle from the websocket (%s); it comes over REST",
                    series.symbol,
                    ms_to_iso(t),
                    problem[1],
                )
                await self._catch_up(series, until_open=t + step)
                return
        if t > series.next_open:
            # Candles before t closed (t opened, or closed) without their last push here.
            await self._catch_up(series, until_open=t)
        if confirmed and t == series.next_open:
            _, o, h, lo, c, v = row
            bar = Bar(
                t + step,
                self.exchange_name,
                series.symbol,
                self.timeframe,
                t,
                float(o),
                float(h),
                float(lo),
                float(c),
                float(v),
            )
            series.websocket_bars += 1
            self._publish(series, bar)

    async def _catch_up(self, series: _Series, *, until_open: int | None) -> None:
        """Bars from the cursor over REST. With ``until_open`` the exchange has proved every
        candle before it closed: asked again with backoff until REST has them, or
        ``gap_patience_s`` passed (then skipped with a warning: the exchange has none)."""
        assert series.next_open is not None
        started = self.monotonic()
        attempt = 0
        while True:
            since = series.next_open
            try:
                bars = await self.backfill(series.symbol, since)
            except Exception as exc:
                if not is_temporary(exc):
                    raise
                log.warning(
                    "%s %s: REST backfill from %s failed: %s",
                    series.symbol,
                    self.timeframe,
                    ms_to_iso(since),
                    describe_error(exc),
                )
                bars = []
            for bar in bars:
                if bar.open_time >= series.next_open:
                    series.rest_bars += 1
                    self._publish(series, bar)
            if until_open is None or series.next_open >= until_open:
                return
            waited = self.monotonic() - started
            if waited >= self.gap_patience_s:
                log.warning(
                    "%s %s: REST still has no candle from %s to %s after %.0f s; skipping them",
                    series.symbol,
                    self.timeframe,
                    ms_to_iso(series.next_open),
                    ms_to_iso(until_open - self.grid.step),
                    waited,
                )
                series.next_open = until_open
                return
            attempt += 1
            await self.sleep(
                backoff_delay(attempt, self.reconnect_base_s, max_delay_s=self.reconnect_max_s)
            )

    def _publish(self, series: _Series, bar: Bar) -> None:
        assert series.next_open is not None
        if bar.open_time > series.next_open:
            log.warning(
                "%s %s: the exchange has no candle from %s to %s",
                series.symbol,
                self.timeframe,
                ms_to_iso(series.next_open),
                ms_to_iso(bar.open_time - self.grid.step),
            )
        series.next_open = bar.open_time + self.grid.step
        series.last_bar = bar
        self.on_bar(bar)


def combined_stream_url(ws_base: str) -> str:
    """The combined-stream endpoint next to a raw-stream URL ccxt lists
    (``wss://stream.binance.com:9443/ws`` -> ``wss://stream.binance.com:9443/stream``)."""
    base = ws_base.rstrip("/")
    if base.endswith("/ws"):
        base = base[: -len("/ws")]
    return f"{base}/stream"


def connect_options(cfg: ExchangeConfig, url: str) -> dict[str, Any]:
    """TLS and address options for ``url`` from ``[exchange]``: ``ca_file`` trusted, a host in
    ``resolve`` connected to at its pinned address (its name kept for TLS and ``Host``)."""
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    if parts.scheme == "wss":
        context = ssl.create_default_context()
        if cfg.ca_file is not None:
            context.load_verify_locations(cafile=str(cfg.ca_file))
        options["ssl"] = context
    host = parts.hostname or ""
    if host in cfg.resolve:
        options["host"] = cfg.resolve[host]
        options["port"] = parts.port or (443 if parts.scheme == "wss" else 80)
        if parts.scheme == "wss":
            options["server_hostname"] = host
    return options


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
