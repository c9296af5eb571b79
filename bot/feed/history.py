"""Downloading historical candles from a ccxt exchange into ``market.db``, resumably.

A download fetches every candle of ``[since, until)`` the store does not hold yet: the part before
the first stored candle, the gaps inside the stored range and the part after the last stored
candle (:meth:`~bot.store.market.MarketStore.missing_ranges`). Each range is walked forward page by
page (``fetch_ohlcv(symbol, timeframe, since, limit)``) and each page is written in its own
transaction once it has passed validation, so an interruption (a crash, Ctrl-C, retries running
out) keeps every finished page, and a rerun fetches only what is still missing: no gap, no
duplicate, no page fetched twice. A gap the exchange itself has (an outage) is asked for again on
each run, which costs one request that answers nothing.

Only *closed* candles are stored. The exchange returns the candle still in progress too, and
storing it would freeze a half-formed bar into the history. A candle counts as closed when the
same answer holds a later candle (the exchange opens ``t + 1`` only after closing ``t``; each
request asks for one candle past the range to get that proof), or else when the exchange's clock
has passed its close. That clock is the exchange's (``fetch_time``) unless the caller passes
``now_ms``; a local clock running ahead would otherwise pass a forming candle as closed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ccxt
import pandas as pd

from bot.feed.exchange import describe_error
from bot.feed.retry import (
    DEFAULT_MAX_WAIT_S,
    RetryWaitTooLong,
    call_with_retries,
    retry_after_from,
)
from bot.feed.validation import Candle, validate_candle_rows
from bot.store.market import MarketStore, candle_frame
from bot.timeframes import CandleGrid, ms_to_iso

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done_candles, expected_total)``, called after each stored page."""

ExchangeTime = Callable[[], Awaitable[int]]
"""Returns a time (epoch ms) the exchange's clock is known to have reached."""


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """What one :func:`download_candles` run did.

    ``first_open_time``/``last_open_time`` bound the candles written by this run (``None`` when
    it wrote none); ``resumed_from`` is where the part after the stored candles began, when the
    store already held candles from ``since`` on (``None`` when it held none). ``ranges`` lists
    the open-time ranges ``[first, stop)`` the run asked the exchange for: the part before the
    stored candles, the gaps inside them and the part after them.
    """

    rows_written: int
    pages: int
    first_open_time: int | None
    last_open_time: int | None
    resumed_from: int | None
    ranges: tuple[tuple[int, int], ...] = ()


class DownloadError(RuntimeError):
    """A download stopped on an exchange error; the pages before it are stored.

    The message says which series, where it stopped, why (one line, no secrets) and that a
    rerun resumes. The ccxt exception is the ``__cause__``.
    """


async def download_candles(
    exchange: Any,
    store: MarketStore,
    *,
    exchange_name: str,
    symbol: str,
    timeframe: str,
    since_ms: int,
    until_ms: int | None = None,
    now_ms: int | None = None,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    progress: Progress | None = None,
) -> DownloadResult:
    """Download the closed ``symbol`` candles with ``since_ms <= open_time < until_ms`` that the
    store lacks.

    ``exchange`` is a ccxt async exchange; rows are stored under ``exchange_name``. Without
    ``until_ms`` the download runs up to the newest closed candle. ``now_ms`` bounds the range
    (default: the exchange's clock, ``fetch_time``); whether the newest candle has closed is
    decided by the exchange either way (a later candle in the answer, or its clock), so a caller's
    clock running ahead cannot store a forming candle. Temporary errors are retried ``max_retries``
    times per request (never waiting longer than ``max_wait_s`` at once); a permanent error, or a
    temporary one that outlasts the retries, raises :class:`DownloadError`. A page that fails
    validation raises ``DataValidationError`` and is not stored.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    grid = CandleGrid(timeframe)
    series = f"{exchange_name} {symbol} {timeframe}"
    retry: dict[str, Any] = {
        "max_retries": max_retries,
        "base_delay_s": base_delay_s,
        "max_wait_s": max_wait_s,
    }
    start = grid.ceil(since_ms)
    last_stored = await store.last_open_time(exchange_name, symbol, timeframe)
    resumed_from = None
    if last_stored is not None and last_stored + grid.step > start:
        resumed_from = last_stored + grid.step
    written = pages = 0
    first: int | None = None
    last: int | None = None
    range_start, done_in_range = start, None
    ranges: list[tuple[int, int]] = []
    try:
        exchange_now: int | None = None

        async def exchange_time() -> int:
            nonlocal exchange_now
            if exchange_now is None:
                exchange_now = int(
                    await call_with_retries(
                        exchange.fetch_time, retry_after=retry_after_from(exchange), **retry
                    )
                )
            return exchange_now

        if now_ms is None:
            now_ms = await exchange_time()
        stop = grid.last_closed(now_ms) + grid.step
        if until_ms is not None:
            stop = min(stop, grid.ceil(until_ms))
        ranges = await store.missing_ranges(exchange_name, symbol, timeframe, start, stop)
        expected = sum((b - a) // grid.step for a, b in ranges)
        _log_plan(series, ranges, expected, grid.step, last_stored if resumed_from else None)

        for range_start, range_stop in ranges:
            done_in_range = None
            async for frame in closed_candle_pages(
                exchange,
                symbol=symbol,
                timeframe=timeframe,
                start_ms=range_start,
                last_open_ms=range_stop - grid.step,
                source=series,
                exchange_time=exchange_time,
                limit=limit,
                **retry,
            ):
                await store.upsert_frame(exchange_name, symbol, timeframe, frame)
                pages += 1
                written += len(frame)
                done_in_range = last = int(frame["open_time"].iloc[-1])
                if first is None:  # ranges come in order, so the first page opens first
                    first = int(frame["open_time"].iloc[0])
                if progress is not None:
                    progress(written, expected)
    except Exception as exc:
        if not is_exchange_error(exc):
            raise
        where = (
            f"after {ms_to_iso(done_in_range)}"
            if done_in_range is not None
            else f"at {ms_to_iso(range_start)}"
        )
        reason = str(exc) if isinstance(exc, RetryWaitTooLong) else describe_error(exc)
        raise DownloadError(
            f"download of {series} stopped {where}: {reason}. "
            "Finished pages are stored; run it again to resume."
        ) from exc
    log.info("downloaded %s: %d candles in %d pages", series, written, pages)
    return DownloadResult(written, pages, first, last, resumed_from, tuple(ranges))


def _log_plan(
    series: str,
    ranges: list[tuple[int, int]],
    expected: int,
    step: int,
    resumed_after: int | None,
) -> None:
    if not ranges:
        log.info("%s is up to date", series)
        return
    log.info(
        "downloading %s: %d candles in %d range(s) from %s to %s%s",
        series,
        expected,
        len(ranges),
        ms_to_iso(ranges[0][0]),
        ms_to_iso(ranges[-1][1] - step),
        f" (the store holds candles up to {ms_to_iso(resumed_after)})" if resumed_after else "",
    )
    for a, b in ranges:
        log.debug("%s: missing %s .. %s", series, ms_to_iso(a), ms_to_iso(b - step))


async def closed_candle_pages(
    exchange: Any,
    *,
    symbol: str,
    timeframe: str,
    start_ms: int,
    last_open_ms: int,
    source: str,
    exchange_time: ExchangeTime,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> AsyncIterator[pd.DataFrame]:
    """:func:`closed_candle_rows` as frames of ``CANDLE_COLUMNS`` (``open_time`` int64), for
    stores that write whole pages."""
    async for rows in closed_candle_rows(
        exchange,
        symbol=symbol,
        timeframe=timeframe,
        start_ms=start_ms,
        last_open_ms=last_open_ms,
        source=source,
        exchange_time=exchange_time,
        limit=limit,
        max_retries=max_retries,
        base_delay_s=base_delay_s,
        max_wait_s=max_wait_s,
    ):
        yield candle_frame(rows)


async def closed_candle_rows(
    exchange: Any,
    *,
    symbol: str,
    timeframe: str,
    start_ms: int,
    last_open_ms: int,
    source: str,
    exchange_time: ExchangeTime,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> AsyncIterator[list[Candle]]:
    """Validated pages of the closed candles with ``start_ms <= open_time <= last_open_ms``.

    Each page is a list of :data:`~bot.feed.validation.Candle` tuples in open-time order (no
    frame is built: a live cycle fetches one or two candles per coin). Each request asks for the
    candles up to one past ``last_open_ms``, so that the answer can prove the newest wanted one
    closed; a candle without a later one in its answer is kept only when ``await
    exchange_time()`` (asked only then) has reached its close, and the walk ends there otherwise.
    It also stops at the end of the range, on an empty page and on a page that does not move
    past the previous one. ccxt errors propagate (after retries of the temporary ones); a page
    that fails validation raises ``DataValidationError``.
    """
    grid = CandleGrid(timeframe)
    cursor = start_ms
    known_time: int | None = None
    while cursor <= last_open_ms:
        page = await call_with_retries(
            exchange.fetch_ohlcv,
            symbol,
            timeframe,
            cursor,
            limit,
            params={"until": last_open_ms + grid.step},
            max_retries=max_retries,
            base_delay_s=base_delay_s,
            max_wait_s=max_wait_s,
            retry_after=retry_after_from(exchange),
        )
        present = [row for row in page if row and row[0] is not None]
        latest = max((int(row[0]) for row in present), default=None)
        rows = [row for row in present if cursor <= row[0] <= last_open_ms]
        unproven = False
        if rows:
            newest = max(int(row[0]) for row in rows)
            close = newest + grid.step
            if latest is not None and latest <= newest:
                if known_time is None or known_time < close:
                    known_time = int(await exchange_time())
                if known_time < close:
                    # Still forming on the exchange (its clock is behind ours): not closed yet.
                    rows = [row for row in rows if int(row[0]) != newest]
                    unproven = True
        if not rows:
            log.info(
                "%s: the exchange has no closed candle from %s on (%d rows returned); stopping",
                source,
                ms_to_iso(cursor),
                len(page),
            )
            return
        candles = validate_candle_rows(
            rows, f"{source} page from {ms_to_iso(cursor)}", timeframe=timeframe
        )
        cursor = candles[-1][0] + grid.step
        yield candles
        if unproven:
            return


def is_exchange_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from talking to the exchange (ccxt's errors, timeouts, sockets, a
    wait the exchange asked for that is too long to sleep through)."""
    return isinstance(exc, ccxt.BaseError | TimeoutError | ConnectionError | RetryWaitTooLong)
