"""The daily summary's day cut: event time only, at the configured UTC hour."""

from __future__ import annotations

from bot.events import PortfolioValued
from bot.telegram.summary import DAY_MS, HOUR_MS, DailyLedger, next_boundary

DAY0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def valued(ts: int, equity: float) -> PortfolioValued:
    return PortfolioValued(ts, equity, equity, (), ())


def test_next_boundary_is_strictly_after() -> None:
    assert next_boundary(DAY0, 0) == DAY0 + DAY_MS
    assert next_boundary(DAY0 + 1, 0) == DAY0 + DAY_MS
    assert next_boundary(DAY0, 6) == DAY0 + 6 * HOUR_MS
    assert next_boundary(DAY0 + 7 * HOUR_MS, 6) == DAY0 + DAY_MS + 6 * HOUR_MS


def test_summary_comes_with_the_first_valuation_of_the_new_day() -> None:
    ledger = DailyLedger(0)
    assert ledger.on_valuation(valued(DAY0 + 10 * HOUR_MS, 100.0)) is None
    ledger.count_fill()
    ledger.count_fill()
    ledger.count_refusal()
    assert ledger.on_valuation(valued(DAY0 + 23 * HOUR_MS, 104.0)) is None
    summary = ledger.on_valuation(valued(DAY0 + DAY_MS, 110.0))
    assert summary is not None
    assert (summary.start_ts, summary.end_ts) == (DAY0 + 10 * HOUR_MS, DAY0 + DAY_MS)
    assert (summary.start_equity, summary.equity) == (100.0, 110.0)
    assert summary.change == 10.0
    assert abs(summary.change_pct - 0.1) < 1e-12
    assert (summary.fills, summary.refusals) == (2, 1)
    assert [p[1] for p in summary.points] == [100.0, 104.0, 110.0]


def test_counts_restart_and_the_next_summary_is_a_day_later() -> None:
    ledger = DailyLedger(6)
    ledger.on_valuation(valued(DAY0, 100.0))
    ledger.count_fill()
    first = ledger.on_valuation(valued(DAY0 + 6 * HOUR_MS, 101.0))
    assert first is not None and first.fills == 1
    assert ledger.on_valuation(valued(DAY0 + 20 * HOUR_MS, 102.0)) is None
    assert ledger.on_valuation(valued(DAY0 + DAY_MS + 5 * HOUR_MS, 103.0)) is None
    second = ledger.on_valuation(valued(DAY0 + DAY_MS + 6 * HOUR_MS, 99.0))
    assert second is not None
    assert second.fills == 0
    assert second.start_equity == 101.0


def test_a_gap_of_several_days_gives_one_summary() -> None:
    ledger = DailyLedger(0)
    ledger.on_valuation(valued(DAY0 + HOUR_MS, 100.0))
    assert ledger.on_valuation(valued(DAY0 + 3 * DAY_MS + HOUR_MS, 90.0)) is not None
    assert ledger.on_valuation(valued(DAY0 + 3 * DAY_MS + 2 * HOUR_MS, 91.0)) is None


def test_out_of_order_valuations_are_ignored() -> None:
    ledger = DailyLedger(0)
    ledger.on_valuation(valued(DAY0 + 2 * HOUR_MS, 100.0))
    assert ledger.on_valuation(valued(DAY0 + HOUR_MS, 50.0)) is None
    summary = ledger.on_valuation(valued(DAY0 + DAY_MS, 100.0))
    assert summary is not None and [p[1] for p in summary.points] == [100.0, 100.0]


def test_chart_history_is_bounded() -> None:
    ledger = DailyLedger(0, chart_days=2)
    for i in range(10 * 24):
        ledger.on_valuation(valued(DAY0 + i * HOUR_MS, 100.0 + i))
    summary = ledger.on_valuation(valued(DAY0 + 10 * DAY_MS, 1.0))
    assert summary is not None
    assert summary.points[0][0] >= DAY0 + 8 * DAY_MS
