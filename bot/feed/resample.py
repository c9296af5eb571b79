"""Resampling candles to a longer timeframe (hourly to the paper's 6-hour bars, say).

Bins follow :class:`bot.timeframes.CandleGrid`: bin ``k`` of a target timeframe ``T`` starts at
``k * T`` epoch ms, so 6h bins open at 00:00, 06:00, 12:00 and 18:00 UTC and 1d bins at
midnight. Weekly bins open on Monday 00:00 UTC, as exchange weekly candles do (epoch day 0 was a
Thursday, so they are offset by four days).

A bin takes open = first source open, high = max, low = min, close = last close and volume =
sum. Missing source candles are never invented:

* a bin with **no** source candle is absent from the output; it stays a gap that the store's
  coverage reports;
* a bin with **some** source candles missing inside the history (an exchange outage, the hours
  before a listing) is listed in :attr:`ResampleResult.incomplete` and kept or dropped according
  to ``partial``;
* the bin **still forming** at the end of the source (its end lies beyond the close of the last
  source candle, given as ``source_end_ms``) is never returned, whatever ``partial`` says: stored
  as a bar it would freeze a half-formed candle into the history. It is reported in
  :attr:`ResampleResult.forming`. :func:`resample_store` always passes the stored series' end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd

from bot.store import MarketStore
from bot.store.market import CANDLE_COLUMNS
from bot.timeframes import CandleGrid, check_resample, ms_to_iso

log = logging.getLogger(__name__)

RESAMPLED_COLUMNS = [*CANDLE_COLUMNS, "missing"]


class IncompleteBin(NamedTuple):
    """A target bin built from fewer source candles than it spans."""

    open_time: int
    missing: int


@dataclass(frozen=True, slots=True)
class ResampleResult:
    """Resampled candles and what was incomplete about them.

    ``frame``: columns ``open_time, open, high, low, close, volume, missing`` (``missing``: the
    number of source candles absent from the bin, 0 for a complete bin), sorted by open time.
    ``incomplete``: every bin inside the history with missing source candles, whether kept or
    dropped. ``dropped``: how many of those were left out (``partial="drop"``).
    ``forming``: the bin still forming at the end of the source, never returned (``None`` when
    the last bin is complete or ``source_end_ms`` was not given).
    """

    frame: pd.DataFrame
    source_timeframe: str
    target_timeframe: str
    incomplete: tuple[IncompleteBin, ...]
    dropped: int
    forming: IncompleteBin | None = None


def resample_candles(
    frame: pd.DataFrame,
    source_timeframe: str,
    target_timeframe: str,
    *,
    partial: Literal["keep", "drop"] = "keep",
    source_end_ms: int | None = None,
) -> ResampleResult:
    """Aggregate ``source_timeframe`` candles into UTC-aligned ``target_timeframe`` candles.

    ``frame`` holds columns ``open_time, open, high, low, close, volume`` with open times
    strictly increasing and aligned to the source timeframe (as the store returns them).
    ``target_timeframe`` must be a whole multiple of ``source_timeframe``. Bins with no source
    candle do not appear; bins with some missing are reported in ``incomplete`` and kept
    (``partial="keep"``) or left out (``"drop"``). ``source_end_ms`` is the close time of the
    source's newest candle (the end of the data, possibly beyond ``frame``): a bin ending after it
    is still forming and is left out and reported as ``forming``. Raises ``ValueError`` for a bad
    timeframe pair, unsorted or misaligned input, or an unknown ``partial``.
    """
    check_resample(source_timeframe, target_timeframe)
    if partial not in ("keep", "drop"):
        raise ValueError(f"partial must be 'keep' or 'drop', not {partial!r}")
    source_grid, target_grid = CandleGrid(source_timeframe), CandleGrid(target_timeframe)
    source_ms, target_ms, origin = source_grid.step, target_grid.step, target_grid.origin
    per_bin = target_ms // source_ms

    open_time = frame["open_time"].to_numpy(dtype="int64")
    if len(open_time) == 0:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in RESAMPLED_COLUMNS})
        empty = empty.astype({"open_time": "int64", "missing": "int64"})
        return ResampleResult(empty, source_timeframe, target_timeframe, (), 0)
    if np.any(np.diff(open_time) <= 0):
        raise ValueError("candles must be sorted by open_time with no duplicates")
    if np.any((open_time - source_grid.origin) % source_ms != 0):
        raise ValueError(f"open times are not aligned to the {source_timeframe} timeframe")

    bins = (open_time - origin) // target_ms * target_ms + origin
    # Input is sorted, so each bin is one contiguous run: reduce each run with ufunc.reduceat.
    starts = np.flatnonzero(np.concatenate(([True], bins[1:] != bins[:-1])))
    ends = np.concatenate((starts[1:], [len(bins)])) - 1
    high = frame["high"].to_numpy(dtype="float64")
    low = frame["low"].to_numpy(dtype="float64")
    volume = frame["volume"].to_numpy(dtype="float64")
    missing = per_bin - (ends - starts + 1)
    result = pd.DataFrame(
        {
            "open_time": bins[starts],
            "open": frame["open"].to_numpy(dtype="float64")[starts],
            "high": np.maximum.reduceat(high, starts),
            "low": np.minimum.reduceat(low, starts),
            "close": frame["close"].to_numpy(dtype="float64")[ends],
            "volume": np.add.reduceat(volume, starts),
            "missing": missing.astype("int64"),
        }
    )
    forming: IncompleteBin | None = None
    if source_end_ms is not None and int(bins[starts][-1]) + target_ms > source_end_ms:
        forming = IncompleteBin(int(bins[starts][-1]), int(missing[-1]))
        result, missing = result.iloc[:-1], missing[:-1]
        starts = starts[:-1]
    short = missing > 0
    incomplete = tuple(
        IncompleteBin(int(t), int(m))
        for t, m in zip(bins[starts][short], missing[short], strict=True)
    )
    dropped = 0
    if partial == "drop" and incomplete:
        result = result[~short]
        dropped = len(incomplete)
    return ResampleResult(
        result.reset_index(drop=True),
        source_timeframe,
        target_timeframe,
        incomplete,
        dropped,
        forming,
    )


async def resample_store(
    store: MarketStore,
    *,
    exchange: str,
    symbol: str,
    source_timeframe: str,
    target_timeframe: str,
    partial: Literal["keep", "drop"] = "keep",
    start: int | None = None,
    end: int | None = None,
) -> ResampleResult:
    """Resample a stored series and upsert the result under ``target_timeframe``.

    ``start``/``end`` (epoch ms, optional) limit the work to the target bins that open in
    ``[start, end)``; ``start`` is rounded down to its bin so no bin is built from a part of its
    candles. The bin still forming at the end of the stored source series is never written
    (see :func:`resample_candles`); an incomplete bin inside the history kept with
    ``partial="keep"`` is overwritten when a later run sees its missing candles (writes are
    upserts), so resampling again after new candles arrive is safe. The store keeps only the
    OHLCV columns; the ``missing`` counts are in the result.
    """
    check_resample(source_timeframe, target_timeframe)
    grid = CandleGrid(target_timeframe)
    if start is not None:
        start = grid.floor(start)
    if end is not None:
        end = grid.ceil(end)
    candles = await store.read_candles(exchange, symbol, source_timeframe, start, end)
    last = await store.last_open_time(exchange, symbol, source_timeframe)
    source_end = None if last is None else last + CandleGrid(source_timeframe).step
    result = resample_candles(
        candles, source_timeframe, target_timeframe, partial=partial, source_end_ms=source_end
    )
    if result.forming is not None:
        log.info(
            "%s %s %s: the bin from %s is still forming (%d %s candles to come); not stored",
            exchange,
            symbol,
            target_timeframe,
            ms_to_iso(result.forming.open_time),
            result.forming.missing,
            source_timeframe,
        )
    await store.upsert_frame(exchange, symbol, target_timeframe, result.frame)
    return result
