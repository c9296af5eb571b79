"""Live candles for the daemon: closed bars over REST, and a websocket stream of closed bars.

When is a streamed candle closed? Binance marks its last update with ``x: true``, but ccxt.pro
drops that flag: ``watch_ohlcv`` hands back bare ``[t, o, h, l, c, v]`` rows, updated in place.
Two signals remain, and only one of them is trustworthy:

- **A later candle appeared** on the same connection. The exchange opens candle ``t + 1`` only
  after closing ``t``, and a socket delivers in order, so by then the cached ``t`` holds its
  final update. This is the rule the stream uses for candles it watched from start to end.
- **The clock passed the close time.** Not enough on its own: the final update arrives a moment
  *after* the close, and local clocks drift. It is the fallback for a quiet or stalled socket:
  once ``now >= close + close_grace_ms`` and the stream has not delivered the candle, it is
  fetched over REST, whose answer for a closed candle is final.

Whatever the cache cannot vouch for comes from REST: candles missed while the socket was down,
candles whose updates straddle a reconnect (the cached row may miss its last update), gaps in
the cache. A per-symbol cursor (the next open time to emit) moves forward only, so every closed
bar comes out exactly once and in order per symbol, whichever path delivered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bot.events import Bar
from bot.feed.exchange import describe_error, is_temporary
from bot.feed.history import CandleGrid, closed_candle_pages
from bot.feed.retry import backoff_delay
from bot.feed.validation import DataValidationError
from bot.store.market import CANDLE_COLUMNS
from bot.timeframes import ms_to_iso

log = logging.getLogger("cryptorlpm.feed")


async def fetch_closed_bars(
    exchange: Any,
    *,
    exchange_name: str,
    symbol: str,
    timeframe: str,
    since_ms: int,
    now_ms: int,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
) -> list[Bar]:
    """Closed ``symbol`` bars with ``open_time >= since_ms`` and ``open_time + tf <= now_ms``.

    Paginates over REST (``fetch_ohlcv``) as far as needed, validates every page and retries
    temporary errors; ccxt's exception propagates when that fails. Bars are in open-time order.
    """
    grid = CandleGrid(timeframe)
    bars: list[Bar] = []
    async for frame in closed_candle_pages(
        exchange,
        symbol=symbol,
        timeframe=timeframe,
        start_ms=grid.ceil(since_ms),
        last_open_ms=grid.last_closed(now_ms),
        source=f"{exchange_name} {symbol} {timeframe} (REST)",
        limit=limit,
        max_retries=max_retries,
        base_delay_s=base_delay_s,
    ):
        bars.extend(_bars(frame, exchange_name, symbol, timeframe, grid.step))
    return bars


@dataclass
class _Cursor:
    """Per-symbol stream state."""

    next_open: int | None
    """Open time of the next bar to emit; ``None`` until the stream shows a first candle."""
    stale_until: int | None = None
    """Cached rows opening at or before this time may predate a reconnect: not trusted."""
    rest_due_ms: int = 0
    """Earliest clock time for the next clock-driven REST attempt."""


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
    max_retries: int = 5,
    base_delay_s: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[Bar]:
    """Yield every closed bar of ``symbols`` once, in open-time order per symbol, forever.

    ``exchange_pro`` is a ccxt.pro exchange (websocket ``watch_ohlcv_for_symbols`` plus REST).
    ``backfill_since_ms[symbol]`` first yields that symbol's closed bars from that open time over
    REST (the daemon passes the bar after the newest one it has); a symbol without it starts at
    the candle in progress when the stream connects. ``now_ms`` is the clock (the exchange's,
    ideally). A dropped websocket is reopened with exponential backoff (``reconnect_base_s`` up
    to ``reconnect_max_s``) and the bars missed meanwhile come over REST. Temporary errors are
    logged and retried; a permanent one (a bad symbol, say) raises. Cancel the consuming task
    or ``aclose()`` the generator to stop it; closing ``exchange_pro`` stays the caller's job.
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

    async def from_rest(symbol: str, cursor: _Cursor, now: int) -> list[Bar] | None:
        """Closed bars from the cursor on (cursor moved past them); ``None`` after logging a
        temporary failure."""
        assert cursor.next_open is not None
        try:
            bars = await fetch_closed_bars(
                exchange_pro,
                exchange_name=exchange_name,
                symbol=symbol,
                timeframe=timeframe,
                since_ms=cursor.next_open,
                now_ms=now,
                max_retries=max_retries,
                base_delay_s=base_delay_s,
            )
        except Exception as exc:
            if not is_temporary(exc):
                raise
            log.warning(
                "REST backfill of %s %s from %s failed, will retry: %s",
                symbol,
                timeframe,
                ms_to_iso(cursor.next_open),
                describe_error(exc),
            )
            return None
        if bars:
            cursor.next_open = bars[-1].open_time + grid.step
        return bars

    watch: asyncio.Future[Any] | None = None
    failures = 0
    try:
        while True:
            # Clock-driven catch-up: the first backfill, and candles a quiet socket left behind.
            for symbol, cursor in cursors.items():
                now = now_ms()
                if (
                    cursor.next_open is not None
                    and now - close_grace_ms >= cursor.next_open + grid.step
                    and now >= cursor.rest_due_ms
                ):
                    bars = await from_rest(symbol, cursor, now - close_grace_ms)
                    if not bars:
                        cursor.rest_due_ms = now + close_grace_ms
                    for bar in bars or ():
                        yield bar

            if watch is None:
                watch = asyncio.ensure_future(exchange_pro.watch_ohlcv_for_symbols(pairs))
            # Wait without cancelling: cancelling a ccxt watch future can lose its subscription.
            done, _ = await asyncio.wait({watch}, timeout=poll_s)
            if not done:
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
                if bars is None:
                    # The exchange opened `latest`, so everything before it is closed there.
                    bars = await from_rest(symbol, cursor, max(now_ms() - close_grace_ms, latest))
                    if bars is None:
                        continue  # the next wake-up tries again
                    if cursor.next_open < latest:
                        log.warning(
                            "%s %s: the exchange has no candle from %s to %s; skipping the gap",
                            symbol,
                            timeframe,
                            ms_to_iso(cursor.next_open),
                            ms_to_iso(latest),
                        )
                cursor.next_open = max(cursor.next_open, latest)
                for bar in bars:
                    yield bar
    finally:
        if watch is not None and not watch.done():
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch


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


def _checked(
    rows: list[list[Any]], exchange_name: str, symbol: str, timeframe: str, grid: CandleGrid
) -> list[Bar] | None:
    """Validated bars from cached rows, or ``None`` (logged) when a row is bad."""
    frame = pd.DataFrame(rows, columns=CANDLE_COLUMNS).astype(
        {"open_time": "int64"} | {c: "float64" for c in CANDLE_COLUMNS[1:]}
    )
    try:
        grid.validate(frame, f"{exchange_name} {symbol} {timeframe} (websocket)")
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
