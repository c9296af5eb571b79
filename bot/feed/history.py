"""Downloading historical candles from a ccxt exchange into ``market.db``, resumably.

The download walks forward page by page (``fetch_ohlcv(symbol, timeframe, since, limit)``) and
writes each page in its own transaction once it has passed validation, so an interruption (a
crash, Ctrl-C, retries running out) keeps every finished page. A rerun starts after the newest
stored candle: no gap, no duplicate, no page fetched twice.

Only *closed* candles are stored: ``open_time + timeframe <= now``, where ``now`` is the
exchange's clock (``fetch_time``) unless given. Binance also returns the candle still in
progress; storing it would freeze a half-formed bar into the history.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ccxt
import pandas as pd

from bot.feed.exchange import describe_error
from bot.feed.resample import bin_origin_ms
from bot.feed.retry import call_with_retries, retry_after_from
from bot.feed.validation import DataValidationError, validate_candles
from bot.store.market import CANDLE_COLUMNS, MarketStore
from bot.timeframes import ms_to_iso, timeframe_ms

log = logging.getLogger("cryptorlpm.feed")

Progress = Callable[[int, int], None]
"""``progress(done_candles, expected_total)``, called after each stored page."""


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """What one :func:`download_candles` run did.

    ``first_open_time``/``last_open_time`` bound the candles written by this run (``None`` when
    it wrote none); ``resumed_from`` is the open time it resumed at because the store already
    held candles from ``since`` on (``None`` when it started at ``since``).
    """

    rows_written: int
    pages: int
    first_open_time: int | None
    last_open_time: int | None
    resumed_from: int | None


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
    progress: Progress | None = None,
) -> DownloadResult:
    """Download the closed ``symbol`` candles with ``since_ms <= open_time < until_ms``.

    ``exchange`` is a ccxt async exchange; rows are stored under ``exchange_name``. Without
    ``until_ms`` the download runs up to the newest closed candle. ``now_ms`` defaults to the
    exchange's clock. Temporary errors are retried ``max_retries`` times per request; a permanent
    error, or a temporary one that outlasts the retries, raises :class:`DownloadError`.
    A page that fails validation raises ``DataValidationError`` and is not stored.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    step = timeframe_ms(timeframe)
    grid = CandleGrid(timeframe)
    series = f"{exchange_name} {symbol} {timeframe}"
    start = grid.ceil(since_ms)
    resumed_from: int | None = None
    last_stored = await store.last_open_time(exchange_name, symbol, timeframe)
    if last_stored is not None and last_stored + step > start:
        start = resumed_from = last_stored + step
    written = pages = 0
    first: int | None = None
    last: int | None = None
    try:
        if now_ms is None:
            now_ms = int(
                await call_with_retries(
                    exchange.fetch_time,
                    max_retries=max_retries,
                    base_delay_s=base_delay_s,
                    retry_after=retry_after_from(exchange),
                )
            )
        last_open = grid.last_closed(now_ms)
        if until_ms is not None:
            last_open = min(last_open, grid.ceil(until_ms) - step)
        expected = max(0, (last_open - start) // step + 1)
        log.info(
            "downloading %s: %d candles from %s to %s%s",
            series,
            expected,
            ms_to_iso(start),
            ms_to_iso(last_open) if expected else "-",
            f" (resuming after {ms_to_iso(last_stored)})" if resumed_from is not None else "",
        )
        async for frame in closed_candle_pages(
            exchange,
            symbol=symbol,
            timeframe=timeframe,
            start_ms=start,
            last_open_ms=last_open,
            source=series,
            limit=limit,
            max_retries=max_retries,
            base_delay_s=base_delay_s,
        ):
            await store.upsert_frame(exchange_name, symbol, timeframe, frame)
            pages += 1
            written += len(frame)
            if first is None:
                first = int(frame["open_time"].iloc[0])
            last = int(frame["open_time"].iloc[-1])
            if progress is not None:
                progress(written, expected)
    except Exception as exc:
        if not is_exchange_error(exc):
            raise
        stored = await store.last_open_time(exchange_name, symbol, timeframe)
        where = f"after {ms_to_iso(stored)}" if stored is not None else "before its first candle"
        raise DownloadError(
            f"download of {series} stopped {where}: {describe_error(exc)}. "
            "Finished pages are stored; run it again to resume."
        ) from exc
    log.info("downloaded %s: %d candles in %d pages", series, written, pages)
    return DownloadResult(written, pages, first, last, resumed_from)


async def closed_candle_pages(
    exchange: Any,
    *,
    symbol: str,
    timeframe: str,
    start_ms: int,
    last_open_ms: int,
    source: str,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
) -> AsyncIterator[pd.DataFrame]:
    """Validated pages of the candles with ``start_ms <= open_time <= last_open_ms``.

    Each page is a frame of CANDLE_COLUMNS (``open_time`` int64). Requests ask for
    ``endTime = last_open_ms`` and rows outside the range are dropped anyway, so the candle still
    in progress never comes out. It stops at the end of the range, on an empty page and on a
    page that does not move past the previous one. ccxt errors propagate (after retries of the
    temporary ones); a page that fails validation raises ``DataValidationError``.
    """
    grid = CandleGrid(timeframe)
    cursor = start_ms
    while cursor <= last_open_ms:
        page = await call_with_retries(
            exchange.fetch_ohlcv,
            symbol,
            timeframe,
            cursor,
            limit,
            params={"until": last_open_ms},
            max_retries=max_retries,
            base_delay_s=base_delay_s,
            retry_after=retry_after_from(exchange),
        )
        rows = [row for row in page if row[0] is not None and cursor <= row[0] <= last_open_ms]
        if not rows:
            log.info(
                "%s: the exchange has no candle from %s on (%d rows returned); stopping",
                source,
                ms_to_iso(cursor),
                len(page),
            )
            return
        frame = _page_frame(rows)
        grid.validate(frame, f"{source} page from {ms_to_iso(cursor)}")
        cursor = int(frame["open_time"].iloc[-1]) + grid.step
        yield frame


class CandleGrid:
    """The open times a timeframe's candles may have: multiples of its length from an origin.

    The origin is the epoch for every timeframe but weeks, which open on Monday 00:00 UTC.
    """

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self.origin = bin_origin_ms(timeframe)

    def floor(self, ms: int) -> int:
        """Open time of the candle that contains ``ms``."""
        return ms - (ms - self.origin) % self.step

    def ceil(self, ms: int) -> int:
        """Open time of the first candle that opens at or after ``ms``."""
        floor = self.floor(ms)
        return floor if floor == ms else floor + self.step

    def last_closed(self, now_ms: int) -> int:
        """Open time of the newest candle closed at ``now_ms`` (``open + step <= now``)."""
        return self.floor(now_ms) - self.step

    def validate(self, frame: pd.DataFrame, source: str) -> None:
        """``validate_candles`` plus alignment to this grid; raises ``DataValidationError``."""
        validate_candles(
            frame,
            source,
            first_line=None,
            timeframe_ms=self.step if self.origin == 0 else None,
        )
        if self.origin:
            offsets = (frame["open_time"].to_numpy() - self.origin) % self.step
            if offsets.any():
                row = int(offsets.nonzero()[0][0])
                at = int(frame["open_time"].iloc[row])
                raise DataValidationError(
                    source,
                    None,
                    "open_time",
                    f"row {row}: open_time {at} [{ms_to_iso(at)}] is not on the "
                    f"{self.timeframe} grid",
                )


def _page_frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """A page of ccxt OHLCV rows as a frame of CANDLE_COLUMNS (values may be ``None``)."""
    frame = pd.DataFrame([list(row[:6]) for row in rows], columns=CANDLE_COLUMNS)
    return frame.astype({c: "float64" for c in CANDLE_COLUMNS[1:]})


def is_exchange_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from talking to the exchange (ccxt's errors, timeouts, sockets)."""
    return isinstance(exc, ccxt.BaseError | TimeoutError | ConnectionError)
