"""Clocks: simulated time only moves forward; the wall clock tracks real time."""

from __future__ import annotations

import time

import pytest

from bot.clock import Clock, SimClock, WallClock
from bot.live.clock import ExchangeTimeClock
from bot.timeframes import HOUR_MS, floor_ms, ms_to_iso, timeframe_ms, to_ms


async def test_sim_clock_jumps_forward_and_never_back() -> None:
    clock = SimClock(1_000)
    await clock.sleep_until(5_000)
    assert clock.now_ms() == 5_000
    await clock.sleep_until(10)
    assert clock.now_ms() == 5_000
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance_to(4_000)


def test_wall_clock_applies_the_exchange_offset() -> None:
    local = time.time_ns() // 1_000_000
    assert abs(WallClock(offset_ms=60_000).now_ms() - local - 60_000) < 1_000


def test_every_clock_satisfies_the_protocol() -> None:
    for clock in (SimClock(), WallClock()):
        assert isinstance(clock, Clock)


def test_timeframe_helpers() -> None:
    assert timeframe_ms("6h") == 6 * HOUR_MS
    assert timeframe_ms("15m") == 15 * 60_000
    assert to_ms("2022-02-28T23:00:00Z") == 1_646_089_200_000
    assert ms_to_iso(1_646_089_200_000) == "2022-02-28T23:00:00Z"
    assert floor_ms(1_646_089_200_000 + 5, HOUR_MS) == 1_646_089_200_000
    with pytest.raises(ValueError, match="timeframe '0h'"):
        timeframe_ms("0h")


async def test_the_exchange_reading_stays_put_while_the_local_estimate_runs_on() -> None:
    local = [100.0]
    server = [1_000_000]

    async def fetch_time() -> int:
        return server[0]

    clock = ExchangeTimeClock(fetch_time, speed=600.0, monotonic=lambda: local[0])
    assert await clock.sleep_until(1_000_000) is True
    local[0] += 0.2  # descheduled for 0.2 s at 600x: the estimate is two minutes on
    assert clock.now_ms() == 1_000_000 + 120_000
    assert clock.reading_ms == 1_000_000  # what decides "late": the exchange's own word
