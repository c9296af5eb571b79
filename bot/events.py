"""Events: frozen records of things that happened, each stamped with UTC epoch milliseconds.

``ts`` is always the moment the event became true and therefore usable: a ``Bar`` is published
when its candle *closes*, a ``Metric`` when its value becomes *known*. Later units add their order
and portfolio events here, so that every event type lives in one module.

The classes are ``slots`` dataclasses: the replay loop builds millions of them, and slots keep
construction and attribute access cheap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event. ``ts``: UTC epoch ms at which the event is known."""

    ts: int


@dataclass(frozen=True, slots=True)
class Bar(Event):
    """A closed OHLCV candle. ``ts`` is the close time, ``open_time + timeframe``."""

    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True, slots=True)
class Metric(Event):
    """A metric value (on-chain, social, ...). ``ts`` is when it became known.

    ``observed_at`` is the start of the period the value describes (for a daily value, 00:00 UTC
    of its day); ``ts`` is at least the end of that period plus the configured publication lag.
    """

    asset: str
    name: str
    observed_at: int
    value: float


@dataclass(frozen=True, slots=True)
class Heartbeat(Event):
    """The clock reached ``ts`` with no new data; lets handlers act on time alone."""
