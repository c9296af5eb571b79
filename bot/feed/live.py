"""Live candles for the daemon: closed bars over REST, and a websocket stream of closed bars.

When is a candle closed? It is the exchange's call, on the exchange's clock. Binance marks a
streamed candle's last update with ``x: true``, but ccxt.pro drops that flag: ``watch_ohlcv``
hands back bare ``[t, o, h, l, c, v]`` rows, updated in place. Two signals remain:

- **A later candle appeared.** The exchange opens candle ``t + 1`` only after closing ``t``. On
  one websocket connection, which delivers in order, the cached ``t`` then holds its final
  update: the stream uses this for candles it watched from start to end. In a REST answer, a
  candle followed by a later one is final too.
- **The exchange's clock passed the close.** Not the local clock: it drifts, and one running
  ahead would pass a forming candle as closed. The stream measures the offset to the exchange's
  clock (``fetch_time``) when it starts and every ``resync_s`` (:class:`ExchangeClock`), and
  REST answers are trusted for a candle with no later one only once that clock has passed its
  close. For a quiet or stalled socket the stream fetches a candle over REST once the exchange's
  clock is ``close_grace_ms`` past its close (the final update arrives a moment after the close).

Whatever the cache cannot vouch for comes from REST: candles missed while the socket was down,
candles whose updates straddle a reconnect (the cached row may miss its last update), gaps in
the cache. A per-symbol cursor (the next open time to emit) moves forward only, so every closed
bar comes out exactly once and in order per symbol, whichever path delivered it.

REST inside the stream never blocks the other symbols for long: a request is tried once, and a
symbol whose request failed is retried later with exponential backoff (at least what the server
asked for in ``Retry-After``, however long) while the others go on. When the socket proves
candles closed that REST does not have yet, the range is asked for again later; only after
``gap_patience_s`` without them is it taken for an exchange outage and skipped, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bot.events import Bar
from bot.feed.exchange import describe_error, is_temporary
from bot.feed.exchange_clock import ExchangeClock
from bot.feed.history import closed_candle_pages
from bot.feed.retry import DEFAULT_MAX_WAIT_S, backoff_delay, call_with_retries, retry_after_from
from bot.feed.validation import DataValidationError, validate_candles
from bot.store.market import CANDLE_COLUMNS, candle_frame
from bot.timeframes import CandleGrid, ms_to_iso

log = logging.getLogger(__name__)


async def fetch_closed_bars(
    exchange: Any,
    *,
    exchange_name: str,
    symbol: str,
    timeframe: str,
    since_ms: int,
    now_ms: int | None = None,
    exchange_time_ms: int | None = None,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> list[Bar]:
    """Closed ``symbol`` bars with ``open_time >= since_ms`` and ``open_time + tf <= now_ms``.

    ``now_ms`` bounds the range (default: the exchange's clock). A bar is returned only when it
    is closed *on the exchange*: a later candle is in the same answer, or the exchange's clock
    has passed its close. ``exchange_time_ms`` is a time the exchange's clock is known to have
    reached (an :class:`ExchangeClock` reading); without it ``fetch_time`` is asked when needed.
    Paginates over REST (``fetch_ohlcv``) as far as needed, validates every page and retries
    temporary errors; ccxt's exception propagates when that fails. Bars are in open-time order.
    """
    grid = CandleGrid(timeframe)
    retry: dict[str, Any] = {
        "max_retries": max_retries,
        "base_delay_s": base_delay_s,
        "max_wait_s": max_wait_s,
    }

    async def exchange_time() -> int:
        if exchange_time_ms is not None:
            return exchange_time_ms
        return int(
            await call_with_retries(
                exchange.fetch_time, retry_after=retry_after_from(exchange), **retry
            )
        )

    if now_ms is None:
        now_ms = await exchange_time()
    bars: list[Bar] = []
    async for frame in closed_candle_pages(
        exchange,
        symbol=symbol,
        timeframe=timeframe,
        start_ms=grid.ceil(since_ms),
        last_open_ms=grid.last_closed(now_ms),
        source=f"{exchange_name} {symbol} {timeframe} (REST)",
        exchange_time=exchange_time,
        limit=limit,
        **retry,
    ):
        bars.extend(_bars(frame, exchange_name, symbol, timeframe, grid.step))
    return bars


@dataclass
class _Backoff:
    """When to try something again after temporary failures."""

    retry_at: float = 0.0
    """Earliest monotonic time (s) for the next try."""
    failures: int = 0
    """Failures in a row."""


@dataclass
class _Cursor(_Backoff):
    """Per-symbol stream state; its backoff paces the symbol's REST requests."""

    next_open: int | None = None
    """Open time of the next bar to emit; ``None`` until the stream shows a first candle."""
    stale_until: int | None = None
    """Cached rows opening at or before this time may predate a reconnect: not trusted."""
    rest_due_ms: int = 0
    """Earliest exchange time for the next clock-driven REST attempt."""
    gap_since: float | None = None
    """Monotonic time (s) since when REST has lacked candles the websocket proved closed."""
    gap_retries: int = 0


async def stream_closed_bars(
    exchange_pro: Any,
    *,
    exchange_name: str,
    symbols: Sequence[str],
    timeframe: str,
    now_ms: Callable[[], int],
    backfill_since_ms: dict[str, int] | None = None,
    close_grace_ms: int = 5_000,
    poll_s: float = 1.0,
    reconnect_base_s: float = 1.0,
    reconnect_max_s: float = 30.0,
    base_delay_s: float = 1.0,
    rest_backoff_max_s: float = 60.0,
    gap_patience_s: float = 300.0,
    resync_s: float = 600.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Bar]:
    """Yield every closed bar of ``symbols`` once, in open-time order per symbol, forever.

    ``exchange_pro`` is a ccxt.pro exchange (websocket ``watch_ohlcv_for_symbols`` plus REST).
    ``backfill_since_ms[symbol]`` first yields that symbol's closed bars from that open time over
    REST (the daemon passes the bar after the newest one it has); a symbol without it starts at
    the candle in progress when the stream connects. ``now_ms`` is the local clock; the stream
    corrects it by the offset to the exchange's clock, measured at start and every ``resync_s``.
    A dropped websocket is reopened with exponential backoff (``reconnect_base_s`` up to
    ``reconnect_max_s``) and the bars missed meanwhile come over REST. A failed REST request is
    retried per symbol with backoff from ``base_delay_s`` up to ``rest_backoff_max_s`` (or the
    server's ``Retry-After``); candles the socket proved closed but REST lacks are asked for
    again until ``gap_patience_s`` has passed, then skipped with a warning. Temporary errors are
    logged and retried; a permanent one (a bad symbol, say) raises. Cancel the consuming task
    or ``aclose()`` the generator to stop it; closing ``exchange_pro`` stays the caller's job.

    ``sleep`` and ``monotonic`` are all the time the stream sees (its waits between polls and
    reconnects, its backoffs, patience and resyncs); a test passes stepped ones and moves time
    itself.
    """
    grid = CandleGrid(timeframe)
    names = list(dict.fromkeys(symbols))
    if not names:
        raise ValueError("stream_closed_bars needs at least one symbol")
    backfill = backfill_since_ms or {}
    cursors = {
        s: _Cursor(
            next_open=grid.ceil(backfill[s]) if s in backfill else None,
            stale_until=_latest_cached(exchange_pro, s, timeframe),
        )
        for s in names
    }
    pairs = [[s, timeframe] for s in names]
    clock = ExchangeClock(exchange_pro, now_ms, resync_s=resync_s, monotonic=monotonic)
    retry_after = retry_after_from(exchange_pro)
    clock_retry = _Backoff()  # paces the clock's resyncs after failures

    def back_off(state: _Backoff, exc: BaseException) -> float:
        """Schedule the next try of ``state`` after a temporary failure; the wait in s."""
        state.failures += 1
        delay = backoff_delay(state.failures, base_delay_s, max_delay_s=rest_backoff_max_s)
        server_wait = retry_after(exc)
        if server_wait is not None and server_wait > delay:
            delay = server_wait  # even a long ban: only this symbol waits, the stream goes on
        state.retry_at = monotonic() + delay
        return delay

    async def sync_clock() -> None:
        if not clock.due() or monotonic() < clock_retry.retry_at:
            return
        try:
            await clock.sync()
        except Exception as exc:
            if not is_temporary(exc):
                raise
            delay = back_off(clock_retry, exc)
            log.warning(
                "cannot read the exchange's clock (%s); trying again in %.1f s",
                describe_error(exc),
                delay,
            )
        else:
            clock_retry.failures = 0

    async def from_rest(symbol: str, cursor: _Cursor, reached_ms: int) -> list[Bar] | None:
        """Closed bars from the cursor up to the exchange time ``reached_ms`` (cursor moved past
        them); ``None`` while this symbol backs off or after logging a temporary failure."""
        assert cursor.next_open is not None
        if monotonic() < cursor.retry_at:
            return None
        try:
            bars = await fetch_closed_bars(
                exchange_pro,
                exchange_name=exchange_name,
                symbol=symbol,
                timeframe=timeframe,
                since_ms=cursor.next_open,
                now_ms=reached_ms,
                exchange_time_ms=reached_ms,
                max_retries=0,  # retried by this stream's own backoff, without blocking others
            )
        except Exception as exc:
            if not is_temporary(exc):
                raise
            delay = back_off(cursor, exc)
            log.warning(
                "REST backfill of %s %s from %s failed (%d in a row), retrying in %.1f s: %s",
                symbol,
                timeframe,
                ms_to_iso(cursor.next_open),
                cursor.failures,
                delay,
                describe_error(exc),
            )
            return None
        cursor.failures = 0
        if bars:
            if bars[0].open_time > cursor.next_open:
                log.warning(
                    "%s %s: the exchange has no candle from %s to %s; skipping the gap",
                    symbol,
                    timeframe,
                    ms_to_iso(cursor.next_open),
                    ms_to_iso(bars[0].open_time - grid.step),
                )
            cursor.next_open = bars[-1].open_time + grid.step
        return bars

    def gap_given_up(symbol: str, cursor: _Cursor, latest: int) -> bool:
        """REST lacks ``[cursor.next_open, latest)``, which the socket proved closed: schedule
        another try, or give up once ``gap_patience_s`` has passed (True)."""
        assert cursor.next_open is not None
        now = monotonic()
        if cursor.gap_since is None:
            cursor.gap_since, cursor.gap_retries = now, 0
            log.info(
                "%s %s: REST has no candle from %s to %s yet; asking again",
                symbol,
                timeframe,
                ms_to_iso(cursor.next_open),
                ms_to_iso(latest - grid.step),
            )
        if now - cursor.gap_since >= gap_patience_s:
            log.warning(
                "%s %s: REST still has no candle from %s to %s after %.1f s of asking; "
                "skipping the gap (the candles the socket watched whole are kept)",
                symbol,
                timeframe,
                ms_to_iso(cursor.next_open),
                ms_to_iso(latest - grid.step),
                now - cursor.gap_since,
            )
            cursor.gap_since = None
            return True
        cursor.gap_retries += 1
        cursor.retry_at = now + backoff_delay(
            cursor.gap_retries, base_delay_s, max_delay_s=rest_backoff_max_s
        )
        return False

    watch: asyncio.Future[Any] | None = None
    failures = 0
    try:
        while True:
            await sync_clock()
            # Clock-driven catch-up: the first backfill, and candles a quiet socket left behind.
            for symbol, cursor in cursors.items():
                exchange_now = clock.now_ms()
                if exchange_now is None or cursor.next_open is None:
                    continue
                ready = exchange_now - close_grace_ms
                if ready >= cursor.next_open + grid.step and exchange_now >= cursor.rest_due_ms:
                    bars = await from_rest(symbol, cursor, ready)
                    if bars == []:
                        cursor.rest_due_ms = exchange_now + close_grace_ms
                    for bar in bars or ():
                        yield bar

            if watch is None:
                watch = asyncio.ensure_future(exchange_pro.watch_ohlcv_for_symbols(pairs))
            # Wait for the socket or ``poll_s`` (through ``sleep``, so a test can step time),
            # without cancelling the watch: that can lose its subscription.
            tick = asyncio.ensure_future(sleep(poll_s))
            try:
                await asyncio.wait({watch, tick}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                tick.cancel()
            if not watch.done():
                continue
            finished, watch = watch, None
            error = finished.exception()
            if error is not None:
                if not is_temporary(error):
                    raise error
                failures += 1
                for symbol, cursor in cursors.items():
                    cursor.stale_until = _max(
                        cursor.stale_until, _latest_cached(exchange_pro, symbol, timeframe)
                    )
                delay = backoff_delay(failures, reconnect_base_s, max_delay_s=reconnect_max_s)
                log.warning(
                    "kline stream of %s lost (%s); reconnecting in %.1f s (attempt %d)",
                    ", ".join(names),
                    describe_error(error),
                    delay,
                    failures,
                )
                await sleep(delay)
                continue
            if failures:
                log.info("kline stream of %s is back after %d attempts", ", ".join(names), failures)
            failures = 0

            for symbol, cursor in cursors.items():
                rows = _cached_rows(exchange_pro, symbol, timeframe)
                if not rows:
                    continue
                latest = int(rows[-1][0])
                if cursor.next_open is None:
                    cursor.next_open = latest  # start with the candle in progress
                    continue
                if latest <= cursor.next_open:
                    continue
                cached = _closed_from_cache(rows, cursor, latest, grid.step)
                bars = None
                if cached is not None:
                    bars = _checked(cached, exchange_name, symbol, timeframe, grid)
                if bars is not None:
                    cursor.next_open, cursor.gap_since = latest, None
                else:
                    # The exchange opened `latest`: its clock reached it, everything before closed.
                    exchange_now = clock.now_ms()
                    reached = latest
                    if exchange_now is not None:
                        reached = max(exchange_now - close_grace_ms, latest)
                    bars = await from_rest(symbol, cursor, reached)
                    if bars is None:
                        continue  # backing off: a later wake-up tries again
                    if cursor.next_open >= latest:
                        cursor.gap_since = None
                    elif gap_given_up(symbol, cursor, latest):
                        watched = _watched_rows(rows, cursor, latest)
                        bars += _checked(watched, exchange_name, symbol, timeframe, grid) or []
                        cursor.next_open = latest
                for bar in bars:
                    yield bar
    finally:
        if watch is not None:
            if not watch.done():
                watch.cancel()
                # Let the cancelled watch finish. Only its own outcome is ignored: a
                # cancellation of this task while waiting propagates.
                await asyncio.wait({watch})
            if not watch.cancelled():
                watch.exception()  # retrieved, so asyncio does not report it as lost


def _closed_from_cache(
    rows: list[list[Any]], cursor: _Cursor, latest: int, step: int
) -> list[list[Any]] | None:
    """Cached rows from the cursor up to (not including) ``latest``, or ``None`` when the cache
    cannot vouch for them (a row is missing, or may predate a reconnect)."""
    assert cursor.next_open is not None
    wanted = [row for row in rows if cursor.next_open <= row[0] < latest]
    if len(wanted) != (latest - cursor.next_open) // step:
        return None
    if cursor.stale_until is not None and any(row[0] <= cursor.stale_until for row in wanted):
        return None
    return wanted


def _watched_rows(rows: list[list[Any]], cursor: _Cursor, latest: int) -> list[list[Any]]:
    """Cached rows from the cursor up to ``latest`` that opened after the last reconnect: their
    updates all came on the current connection, so ``latest`` opening proves them final."""
    assert cursor.next_open is not None
    return [
        row
        for row in rows
        if cursor.next_open <= row[0] < latest
        and (cursor.stale_until is None or row[0] > cursor.stale_until)
    ]


def _checked(
    rows: list[list[Any]], exchange_name: str, symbol: str, timeframe: str, grid: CandleGrid
) -> list[Bar] | None:
    """Validated bars from cached rows, or ``None`` (logged) when a row is bad."""
    frame = candle_frame(rows)
    try:
        validate_candles(
            frame,
            f"{exchange_name} {symbol} {timeframe} (websocket)",
            first_line=None,
            timeframe=timeframe,
        )
    except DataValidationError as exc:
        log.warning("%s; fetching those candles over REST instead", exc)
        return None
    return _bars(frame, exchange_name, symbol, timeframe, grid.step)


def _bars(
    frame: pd.DataFrame, exchange_name: str, symbol: str, timeframe: str, step: int
) -> list[Bar]:
    return [
        Bar(int(t) + step, exchange_name, symbol, timeframe, int(t), o, h, lo, c, v)
        for t, o, h, lo, c, v in frame[CANDLE_COLUMNS].itertuples(index=False, name=None)
    ]


def _cached_rows(exchange_pro: Any, symbol: str, timeframe: str) -> list[list[Any]]:
    """A copy of ccxt.pro's candle cache for one series (ccxt mutates its rows in place)."""
    cache = (getattr(exchange_pro, "ohlcvs", None) or {}).get(symbol, {}).get(timeframe)
    if not cache:
        return []
    rows = [list(row[:6]) for row in cache if row and row[0] is not None]
    rows.sort(key=lambda row: row[0])
    return rows


def _latest_cached(exchange_pro: Any, symbol: str, timeframe: str) -> int | None:
    rows = _cached_rows(exchange_pro, symbol, timeframe)
    return int(rows[-1][0]) if rows else None


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
