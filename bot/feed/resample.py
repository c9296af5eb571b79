"""Resampling candles to a longer timeframe (hourly to the paper's 6-hour bars, say).

Bins are UTC-aligned: bin ``k`` of a target timeframe ``T`` starts at ``k * T`` epoch ms, so 6h
bins open at 00:00, 06:00, 12:00 and 18:00 UTC and 1d bins at midnight. Weekly bins open on
Monday 00:00 UTC, as exchange weekly candles do (epoch day 0 was a Thursday, so they are offset
by four days).

A bin takes open = first source open, high = max, low = min, close = last close and volume =
sum. Missing source candles are never invented:

* a bin with **no** source candle is absent from the output; it stays a gap that the store's
  coverage reports;
* a bin with **some** source candles missing (an exchange outage, the hours before a listing,
  the bin still forming at the end of the data) is listed in :attr:`ResampleResult.incomplete`
  and kept or dropped according to ``partial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd

from bot.store import MarketStore
from bot.store.market import CANDLE_COLUMNS
from bot.timeframes import DAY_MS, timeframe_ms

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
    ``incomplete``: every bin with missing source candles, whether kept or dropped.
    ``dropped``: how many of those were left out (``partial="drop"``).
    """

    frame: pd.DataFrame
    source_timeframe: str
    target_timeframe: str
    incomplete: tuple[IncompleteBin, ...]
    dropped: int


def bin_origin_ms(target_timeframe: str) -> int:
    """Epoch-ms offset of the bin grid: 0, or Monday 1970-01-05 for weekly timeframes."""
    return 4 * DAY_MS if target_timeframe.endswith("w") else 0


def resample_candles(
    frame: pd.DataFrame,
    source_timeframe: str,
    target_timeframe: str,
    *,
    partial: Literal["keep", "drop"] = "keep",
) -> ResampleResult:
    """Aggregate ``source_timeframe`` candles into UTC-aligned ``target_timeframe`` candles.

    ``frame`` holds columns ``open_time, open, high, low, close, volume`` with open times
    strictly increasing and aligned to the source timeframe (as the store returns them).
    ``target_timeframe`` must be a whole multiple of ``source_timeframe``. Bins with no source
    candle do not appear; bins with some missing are reported in ``incomplete`` and kept
    (``partial="keep"``) or left out (``"drop"``). Raises ``ValueError`` for a bad timeframe
    pair, unsorted or misaligned input, or an unknown ``partial``.
    """
    source_ms = timeframe_ms(source_timeframe)
    target_ms = timeframe_ms(target_timeframe)
    if target_ms % source_ms != 0:
        raise ValueError(
            f"cannot resample {source_timeframe} to {target_timeframe}: "
            f"{target_timeframe} is not a whole multiple of {source_timeframe}"
        )
    if partial not in ("keep", "drop"):
        raise ValueError(f"partial must be 'keep' or 'drop', not {partial!r}")
    origin = bin_origin_ms(target_timeframe)
    if (origin - bin_origin_ms(source_timeframe)) % source_ms != 0:
        raise ValueError(f"{target_timeframe} bins do not line up with {source_timeframe} bins")
    per_bin = target_ms // source_ms

    open_time = frame["open_time"].to_numpy(dtype="int64")
    if len(open_time) == 0:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in RESAMPLED_COLUMNS})
        empty = empty.astype({"open_time": "int64", "missing": "int64"})
        return ResampleResult(empty, source_timeframe, target_timeframe, (), 0)
    if np.any(np.diff(open_time) <= 0):
        raise ValueError("candles must be sorted by open_time with no duplicates")
    if np.any((open_time - bin_origin_ms(source_timeframe)) % source_ms != 0):
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
    short = missing > 0
    incomplete = tuple(
        IncompleteBin(int(t), int(m))
        for t, m in zip(bins[starts][short], missing[short], strict=True)
    )
    dropped = 0
    if partial == "drop" and incomplete:
        result = result[~short].reset_index(drop=True)
        dropped = len(incomplete)
    return ResampleResult(result, source_timeframe, target_timeframe, incomplete, dropped)


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
    candles. An incomplete bin kept with ``partial="keep"`` is overwritten when a later run sees
    its missing candles (writes are upserts), so resampling again after new candles arrive is
    safe. The store keeps only the OHLCV columns; the ``missing`` counts are in the result.
    """
    target_ms = timeframe_ms(target_timeframe)
    origin = bin_origin_ms(target_timeframe)
    if start is not None:
        start = (start - origin) // target_ms * target_ms + origin
    if end is not None:
        end = -((origin - end) // target_ms) * target_ms + origin  # round up to a bin edge
    candles = await store.read_candles(exchange, symbol, source_timeframe, start, end)
    result = resample_candles(candles, source_timeframe, target_timeframe, partial=partial)
    await store.upsert_frame(exchange, symbol, target_timeframe, result.frame)
    return result
