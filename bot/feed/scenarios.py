"""Stress scenarios for the synthetic market: where they fall and how they bend the price path.

Each scenario replays the shape of a real crypto event on the synthetic hourly log returns:

``covid_crash`` (2020-03-12 style)
    Every coin falls by 42-55% over two days (two thirds of the fall on the first day), then
    recovers 35-65% of the lost log-distance over the following 28 days. Window: 30 days from the
    crash start; the two crash days are also forced into the ``stress`` regime.
``luna_collapse`` (2022-05-08 style)
    The *last* coin of the list loses 99.8-99.95% over 7 days, accelerating towards the end. After
    the window it drifts down (-100% a year) and can never climb back above 5% of its pre-collapse
    close: the log path is reflected at that ceiling. Prices stay strictly positive. Window: 7 days.
    Unlike the two crashes, which are exogenous shocks, the collapse is *foreseen* by the coin's
    leading metrics (see :func:`apply_scenarios`).
``flash_crash`` (2021-05-19 style)
    The *first* coin drops 32-40% within one hourly bar (close to close) and recovers to 97-100% of
    the pre-crash close over the next 5 bars. Window: 6 hours from the crash bar's open.

Placement: a scenario starts at its historical date (``covid_crash`` 2020-03-12 00:00 UTC,
``luna_collapse`` 2022-05-08 00:00 UTC, ``flash_crash`` 2021-05-19 13:00 UTC) when its whole window
fits in the generated range after at least one earlier bar. Otherwise it starts at a fixed fraction
of the range (covid 0.2, flash 0.5, luna 0.75; then 0.35, 0.65, 0.1, 0.9 if that one is taken),
aligned to the day (covid, luna) or the hour (flash). Windows never overlap; a scenario that finds
no room (a range shorter than its window) is left out and absent from ``scenario_windows``.

Inside a window the scenario fixes where the price *ends* (a bridge: the segment's own noise with
its mean removed, plus the scenario's planned path), so the shapes hold for every seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bot.timeframes import DAY_MS, HOUR_MS, to_ms

COVID_CRASH = "covid_crash"
LUNA_COLLAPSE = "luna_collapse"
FLASH_CRASH = "flash_crash"
SCENARIOS = (COVID_CRASH, LUNA_COLLAPSE, FLASH_CRASH)

COVID_CRASH_HOURS = 48
COVID_RECOVERY_HOURS = 28 * 24
LUNA_COLLAPSE_HOURS = 7 * 24
LUNA_CEILING = 0.05
"""After the collapse the coin never closes above this fraction of its pre-collapse close."""
LUNA_DRIFT_AFTER = -1.0
"""Annualised log drift added to the collapsed coin for the rest of the range."""
FLASH_RECOVERY_HOURS = 5

_HOURS_PER_YEAR = 365 * 24


@dataclass(frozen=True)
class _Spec:
    historical_start_ms: int
    hours: int
    fallback_fraction: float
    align_ms: int


_SPECS = {
    COVID_CRASH: _Spec(to_ms("2020-03-12"), COVID_CRASH_HOURS + COVID_RECOVERY_HOURS, 0.2, DAY_MS),
    LUNA_COLLAPSE: _Spec(to_ms("2022-05-08"), LUNA_COLLAPSE_HOURS, 0.75, DAY_MS),
    FLASH_CRASH: _Spec(to_ms("2021-05-19T13:00"), 1 + FLASH_RECOVERY_HOURS, 0.5, HOUR_MS),
}
_SPARE_FRACTIONS = (0.35, 0.65, 0.1, 0.9)


@dataclass(frozen=True)
class PlacedScenario:
    """A scenario placed on the hourly grid: bars ``start_hour <= i < end_hour`` are its window."""

    name: str
    start_hour: int
    end_hour: int
    coins: tuple[str, ...]


def scenario_hours(name: str) -> int:
    """Length of a scenario's window in hours."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown scenario {name!r}; expected one of {SCENARIOS}")
    return spec.hours


def affected_coins(name: str, coins: Sequence[str]) -> tuple[str, ...]:
    """Coins a scenario hits: all for ``covid_crash``, the last for ``luna_collapse``, the first
    for ``flash_crash``."""
    if name == COVID_CRASH:
        return tuple(coins)
    if name == LUNA_COLLAPSE:
        return (coins[-1],)
    if name == FLASH_CRASH:
        return (coins[0],)
    raise ValueError(f"unknown scenario {name!r}; expected one of {SCENARIOS}")


def place_scenarios(
    names: Sequence[str], coins: Sequence[str], first_open_ms: int, n_hours: int
) -> list[PlacedScenario]:
    """Put each named scenario on the hourly grid that starts at ``first_open_ms``.

    Returns the placed scenarios in chronological order; see the module docstring for the rules.
    """
    placed: list[PlacedScenario] = []
    for name in dict.fromkeys(names):
        spec = _SPECS.get(name)
        if spec is None:
            raise ValueError(f"unknown scenario {name!r}; expected one of {SCENARIOS}")
        for start in _candidate_starts(spec, first_open_ms, n_hours):
            end = start + spec.hours
            fits = start >= 1 and end <= n_hours
            if fits and all(end <= p.start_hour or start >= p.end_hour for p in placed):
                placed.append(PlacedScenario(name, start, end, affected_coins(name, coins)))
                break
    return sorted(placed, key=lambda p: p.start_hour)


def _candidate_starts(spec: _Spec, first_open_ms: int, n_hours: int) -> list[int]:
    starts = [(spec.historical_start_ms - first_open_ms) // HOUR_MS]
    for fraction in (spec.fallback_fraction, *_SPARE_FRACTIONS):
        ms = first_open_ms + int(fraction * n_hours) * HOUR_MS
        aligned = -(-ms // spec.align_ms) * spec.align_ms  # round up to the day / hour
        starts.append((aligned - first_open_ms) // HOUR_MS)
    return starts


def stress_hours(placed: Sequence[PlacedScenario]) -> list[tuple[int, int]]:
    """Hour ranges that the market regime must show as ``stress`` (the covid crash days)."""
    return [
        (p.start_hour, p.start_hour + COVID_CRASH_HOURS) for p in placed if p.name == COVID_CRASH
    ]


def apply_scenarios(
    log_returns: np.ndarray, coin: str, placed: Sequence[PlacedScenario], rng: np.random.Generator
) -> np.ndarray:
    """Bend one coin's hourly log returns (in place) by every placed scenario that hits it.

    Returns the part of the change that on-chain data would have seen coming, per hour: the luna
    collapse (a bank run shows in the flows before the price) and the drift after it. The covid
    and flash crashes are exogenous shocks and stay unforeseen (zeros).
    """
    foreseen = np.zeros_like(log_returns)
    mine = [p for p in placed if coin in p.coins]
    for scenario in mine:
        if scenario.name == COVID_CRASH:
            _covid_crash(log_returns, scenario.start_hour, scenario.end_hour, rng)
        elif scenario.name == LUNA_COLLAPSE:
            _luna_collapse(log_returns, foreseen, scenario.start_hour, scenario.end_hour, rng)
        else:
            _flash_crash(log_returns, scenario.start_hour, scenario.end_hour, rng)
    for scenario in mine:
        if scenario.name == LUNA_COLLAPSE:
            _keep_below_ceiling(log_returns, scenario.start_hour, scenario.end_hour)
    return foreseen


def _bridge(log_returns: np.ndarray, start: int, planned: np.ndarray) -> None:
    """Replace a segment by its own noise, demeaned, plus the planned per-hour moves."""
    segment = log_returns[start : start + len(planned)]
    segment[:] = segment - segment.mean() + planned


def _covid_crash(log_returns: np.ndarray, start: int, end: int, rng: np.random.Generator) -> None:
    fall = np.log(1.0 - rng.uniform(0.42, 0.55))
    weights = np.r_[np.full(24, 2.0), np.full(COVID_CRASH_HOURS - 24, 1.0)]
    _bridge(log_returns, start, fall * weights / weights.sum())
    recovery_start = start + COVID_CRASH_HOURS
    recovered = -fall * rng.uniform(0.35, 0.65)
    decay = np.exp(-np.arange(end - recovery_start) / (10 * 24))  # fastest in the first days
    log_returns[recovery_start:end] += recovered * decay / decay.sum()


def _luna_collapse(
    log_returns: np.ndarray,
    foreseen: np.ndarray,
    start: int,
    end: int,
    rng: np.random.Generator,
) -> None:
    fall = np.log(1.0 - rng.uniform(0.998, 0.9995))
    weights = np.linspace(0.2, 1.8, end - start)  # accelerating, as a bank run does
    planned = fall * weights / weights.sum()
    _bridge(log_returns, start, planned)
    log_returns[end:] += LUNA_DRIFT_AFTER / _HOURS_PER_YEAR
    foreseen[start:end] += planned
    foreseen[end:] += LUNA_DRIFT_AFTER / _HOURS_PER_YEAR


def _keep_below_ceiling(log_returns: np.ndarray, start: int, end: int) -> None:
    """Reflect the log price after the collapse at ``LUNA_CEILING`` x the pre-collapse close."""
    if end >= len(log_returns):
        return
    path = np.cumsum(log_returns)
    ceiling = path[start - 1] + np.log(LUNA_CEILING)
    after = path[end - 1 :]
    reflected = ceiling - np.abs(after - ceiling)
    log_returns[end:] = np.diff(reflected)


def _flash_crash(log_returns: np.ndarray, start: int, end: int, rng: np.random.Generator) -> None:
    drop = np.log(1.0 - rng.uniform(0.32, 0.40))
    back = np.log(rng.uniform(0.97, 1.0))
    log_returns[start] = drop
    weights = np.array([0.4, 0.25, 0.15, 0.12, 0.08])[: end - start - 1]
    _bridge(log_returns, start + 1, (back - drop) * weights / weights.sum())
