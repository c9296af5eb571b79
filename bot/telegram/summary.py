"""The daily summary's bookkeeping: equity points, fills and refusals, cut at a UTC hour.

Time comes only from event timestamps, never from the wall clock, so a replay produces the same
summaries as the live run did. A summary is due when a valuation's ``ts`` reaches the next
boundary (``daily_summary_hour`` o'clock UTC); it covers everything since the previous summary
(or since the first valuation seen) and ends with that valuation, which is usually the bar that
closes the day.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bot.events import PortfolioValued
from bot.timeframes import DAY_MS, HOUR_MS


@dataclass(frozen=True, slots=True)
class DaySummary:
    """What a daily summary reports. ``points``: (ts, equity) for the chart, oldest first."""

    start_ts: int
    end_ts: int
    start_equity: float
    equity: float
    fills: int
    refusals: int
    points: tuple[tuple[int, float], ...]

    @property
    def change(self) -> float:
        """Equity change over the period in the quote currency."""
        return self.equity - self.start_equity

    @property
    def change_pct(self) -> float | None:
        """Relative equity change (None when the start equity is not positive)."""
        if self.start_equity <= 0:
            return None
        return self.equity / self.start_equity - 1.0


def next_boundary(ts: int, hour: int) -> int:
    """The first ``hour`` o'clock UTC strictly after ``ts`` (epoch ms)."""
    boundary = ts - ts % DAY_MS + hour * HOUR_MS
    while boundary <= ts:
        boundary += DAY_MS
    return boundary


class DailyLedger:
    """Collects what a daily summary needs and says when one is due.

    ``chart_days``: how much equity history the chart shows; ``max_points`` caps the memory
    whatever the valuation frequency.
    """

    def __init__(self, hour: int, *, chart_days: int = 30, max_points: int = 20_000) -> None:
        if not 0 <= hour <= 23:
            raise ValueError("hour must be within 0..23")
        self.hour = hour
        self._chart_ms = chart_days * DAY_MS
        self._points: deque[tuple[int, float]] = deque(maxlen=max_points)
        self._boundary: int | None = None
        self._start: tuple[int, float] | None = None
        self._fills = 0
        self._refusals = 0

    def count_fill(self) -> None:
        """A fill happened in the running period."""
        self._fills += 1

    def count_refusal(self) -> None:
        """A guardrail refusal happened in the running period."""
        self._refusals += 1

    def on_valuation(self, event: PortfolioValued) -> DaySummary | None:
        """Record a valuation; returns the summary it completes, if it crosses the boundary."""
        ts, equity = int(event.ts), float(event.equity)
        if self._points and ts < self._points[-1][0]:
            return None  # out of order: a replayed or duplicated valuation changes nothing
        self._points.append((ts, equity))
        while self._points and self._points[0][0] < ts - self._chart_ms:
            self._points.popleft()
        if self._boundary is None:
            self._boundary = next_boundary(ts, self.hour)
            self._start = (ts, equity)
            return None
        if ts < self._boundary:
            return None
        assert self._start is not None
        summary = DaySummary(
            start_ts=self._start[0],
            end_ts=ts,
            start_equity=self._start[1],
            equity=equity,
            fills=self._fills,
            refusals=self._refusals,
            points=tuple(self._points),
        )
        self._start = (ts, equity)
        self._fills = self._refusals = 0
        self._boundary = next_boundary(ts, self.hour)
        return summary
