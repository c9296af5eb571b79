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
