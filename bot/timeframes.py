"""Timeframes and UTC epoch-millisecond time helpers.

Every timestamp in the system is an ``int`` of UTC epoch milliseconds. These helpers are the
only place that turns dates and timeframe strings into milliseconds.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

_UNITS_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}
_TIMEFRAME = re.compile(r"^(\d+)([mhdw])$")


def timeframe_ms(timeframe: str) -> int:
    """Length of a ccxt-style timeframe (``"1m"``, ``"15m"``, ``"1h"``, ``"6h"``, ``"1d"``) in ms.

    Raises ``ValueError`` naming the timeframe when it is not of that form.
    """
    match = _TIMEFRAME.match(timeframe)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"timeframe {timeframe!r}: expected <positive int><m|h|d|w>, e.g. '1h'")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def bars_in_days(days: float, timeframe: str) -> int:
    """``days`` as a whole number of ``timeframe`` bars (rounded, at least 1): a window of days
    counted in bars, as the trend filter and the timing test count it."""
    return max(1, round(days * DAY_MS / timeframe_ms(timeframe)))


def to_ms(value: str | date | datetime | int) -> int:
    """Convert an ISO date/datetime string, a date, a datetime or epoch ms to UTC epoch ms.

    Naive datetimes and plain dates are taken as UTC.
    """
    if isinstance(value, bool):
        raise TypeError("a bool is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        value = datetime.fromisoformat(text)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    raise TypeError(f"cannot convert {type(value).__name__} to epoch ms")


def ms_to_datetime(ms: int) -> datetime:
    """UTC ``datetime`` for an epoch-millisecond timestamp."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ms_to_iso(ms: int) -> str:
    """ISO-8601 text (``2022-02-28T23:00:00Z``) for an epoch-millisecond timestamp."""
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_ms(ms: int, step_ms: int) -> int:
    """Start of the ``step_ms`` bin (UTC-aligned) that contains ``ms``."""
    return ms - (ms % step_ms)


WEEK_ORIGIN_MS = 4 * DAY_MS
"""Monday 1970-01-05 00:00 UTC: weekly candles open on Mondays (epoch day 0 was a Thursday)."""


def bin_origin_ms(timeframe: str) -> int:
    """Epoch-ms origin of a timeframe's grid: 0, or Monday 1970-01-05 for weekly timeframes."""
    return WEEK_ORIGIN_MS if timeframe.endswith("w") else 0


class CandleGrid:
    """The open times a timeframe's candles may have: multiples of its length from an origin.

    The origin is the epoch for every timeframe but weeks, which open on Monday 00:00 UTC as
    exchange weekly candles do. Validation, downloads, resampling and CSV import all use this
    one grid, so a series that passes one of them passes the others.
    """

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self.origin = bin_origin_ms(timeframe)

    def __repr__(self) -> str:
        return f"CandleGrid({self.timeframe!r})"

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

    def is_aligned(self, ms: int) -> bool:
        """Whether ``ms`` is the open time of one of this grid's candles."""
        return (ms - self.origin) % self.step == 0

    def describe(self) -> str:
        """The grid in words, for error messages: ``"1w grid (Mondays 00:00 UTC)"``."""
        if self.origin:
            return f"{self.timeframe} grid (Mondays 00:00 UTC)"
        return f"{self.timeframe} grid (multiples of {self.step} ms since the epoch)"


def check_resample(source_timeframe: str, target_timeframe: str) -> None:
    """Raise ``ValueError`` unless ``source`` candles can be aggregated into ``target`` bins.

    Both must be valid timeframes, the target a whole multiple of the source, and every target
    bin edge a source candle edge (weekly bins start on Mondays).
    """
    source = CandleGrid(source_timeframe)
    target = CandleGrid(target_timeframe)
    if target.step % source.step != 0:
        raise ValueError(
            f"cannot resample {source_timeframe} to {target_timeframe}: "
            f"{target_timeframe} is not a whole multiple of {source_timeframe}"
        )
    if not source.is_aligned(target.origin):
        raise ValueError(f"{target_timeframe} bins do not line up with {source_timeframe} bins")
