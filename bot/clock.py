"""Clocks: the only source of "now". Strategies never read the wall clock; drivers own a clock.

``SimClock`` is moved forward by the replay driver (and by tests); ``WallClock`` follows real
time, optionally corrected by an offset measured against the exchange's clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What drivers and edges need from time."""

    def now_ms(self) -> int:
        """Current UTC epoch milliseconds."""
        ...

    async def sleep_until(self, ts_ms: int) -> None:
        """Return once ``now_ms() >= ts_ms``."""
        ...


class SimClock:
    """Simulated time: only moves when told to, never backwards."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = int(start_ms)

    def now_ms(self) -> int:
        """Current simulated time."""
        return self._now

    def advance_to(self, ts_ms: int) -> None:
        """Move time to ``ts_ms``; refuses to go backwards."""
        if ts_ms < self._now:
            raise ValueError(f"SimClock cannot go back from {self._now} to {ts_ms}")
        self._now = int(ts_ms)

    async def sleep_until(self, ts_ms: int) -> None:
        """Jump to ``ts_ms`` at once (if it lies ahead) and yield to the loop once."""
        if ts_ms > self._now:
            self._now = int(ts_ms)
        await asyncio.sleep(0)


class WallClock:
    """Real UTC time, plus ``offset_ms`` (exchange time minus local time, when measured)."""

    def __init__(self, offset_ms: int = 0, max_sleep_s: float = 5.0) -> None:
        self.offset_ms = int(offset_ms)
        self._max_sleep_s = max_sleep_s

    def now_ms(self) -> int:
        """Current UTC epoch ms, corrected by the offset."""
        return time.time_ns() // 1_000_000 + self.offset_ms

    async def sleep_until(self, ts_ms: int) -> None:
        """Sleep in short slices so a corrected offset or a suspended host is noticed."""
        while (remaining := ts_ms - self.now_ms()) > 0:
            await asyncio.sleep(min(remaining / 1000, self._max_sleep_s))
