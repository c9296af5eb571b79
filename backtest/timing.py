"""Does a policy time its coins? A coin sleeve's return split into exposure and timing.

A module decides, at the close ``t``, the share ``w_t`` (0..1) of its coin's sleeve held in the
coin; the sleeve then earns ``w_t r_t``, with ``r_t`` the coin's close-to-close return over the
next bar. Over the decisions, exactly::

    mean(w r) = mean(w) mean(r) + cov(w, r)       (cov with 1/n: the population covariance)

* **exposure**, ``mean(w) mean(r)``: what holding the coin's average share all the time earns;
  against buying and holding the coin it gives up ``(1 - mean(w)) mean(r)``;
* **timing**, ``cov(w, r)``: what holding more before the coin's better bars adds. A policy with
  no information about the next bar has timing near 0 whatever its exposure.

Both are before costs, per bar, and reported per year (x bars per year, arithmetic). Over seeds
(or seed bags) timing is the mean of the seeds' covariances; its one-sided p-value comes from
circular shifts of the weights against the returns: every shift at least ``min_shift`` bars from
0 either way, the same shift for every seed (so the seeds' agreement is kept), ``p = (1 +
#{shifted >= observed}) / (1 + #shifts)`` (and the other tail's, with ``<=``). Shifting keeps
the positions' persistence and the returns' distribution and breaks only their alignment. A
portfolio's timing is the mean over its coins (each sleeve is 1/N of the account), tested with
the same shifts.

The engine fills a decision at the next bar's open, so the sleeve really earns from that open;
on markets that trade around the clock the open is the close before it, to a tick. Seeds with
no decision for a coin in the span are left out (of every coin, for a portfolio); positions
that never move in time have nothing to test and add exactly 0.

Everything here reads decisions and closes only: no model, no look-ahead beyond the one bar a
decision is held for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from bot.events import GrossExposure, ModuleDecision, VariantWeights
from bot.timeframes import DAY_MS, bars_in_days, timeframe_ms

MIN_SHIFT_DAYS = 7
"""Shifts closer to 0 than this are left out of the null (positions persist for days)."""


@dataclass(frozen=True)
class SleeveTiming:
    """One coin's sleeve (or a portfolio's mean sleeve) over the decisions, per year, before
    costs: ``held`` = the coin's mean return (buying and holding it), ``mean_weight``,
    ``exposure`` and ``timing`` (they sum to the sleeve's mean return), the timing's one-sided
    ``p_value`` against circular shifts (None with too few decisions for any shift, or with
    positions that never move), ``p_value_below`` the other tail's (is the timing worse than
    chance?), the middle 90% of the shifted timings (``null_low``, ``null_high``, per year; NaN
    without a test) and the share of seeds whose own timing is positive."""

    decisions: int
    seeds: int
    held: float
    mean_weight: float
    exposure: float
    timing: float
    p_value: float | None
    p_value_below: float | None
    null_low: float
    null_high: float
    seeds_positive: float

    @property
    def sleeve(self) -> float:
        """The sleeve's mean return per year: exposure + timing."""
        return self.exposure + self.timing

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form."""
        return {**asdict(self), "sleeve": self.sleeve}


def next_bar_returns(closes: pd.Series, timeframe: str) -> pd.Series:
    """Each close's return to the close one bar later, indexed by the first close's time (NaN
    where the next bar is missing)."""
    step = timeframe_ms(timeframe)
    later = closes.reindex(closes.index + step).to_numpy(float)
    return pd.Series(later / closes.to_numpy(float) - 1.0, index=closes.index)


def trend_weights(closes: pd.Series, timeframe: str, days: int) -> pd.Series:
    """The trend filter's signal at each close (1 while the close is above the mean of the last
    ``days`` days of closes, itself included; 0 before a full window), as
    :class:`strategies.baselines.TrendFilter` decides it."""
    length = bars_in_days(days, timeframe)
    mean = closes.rolling(length, min_periods=length).mean()
    return (closes > mean).astype(float).where(mean.notna(), 0.0)


def decision_weights(
    decisions: Iterable[ModuleDecision], coin: str, start_ms: int, end_ms: int
) -> pd.Series:
    """``coin``'s decided weights at their closes in ``[start_ms, end_ms)`` (the last decision
    at a close wins)."""
    rows = {d.ts: d.coin_weight for d in decisions if d.coin == coin and start_ms <= d.ts < end_ms}
    return pd.Series(rows, dtype=float).sort_index()


def gross_exposure(notes: Iterable[object]) -> pd.Series:
    """A manager's gross exposure (0..1) at each close it noted one (empty without a manager's
    notes): every coin's decided sleeve share is scaled by it."""
    rows = {n.ts: n.exposure for n in notes if isinstance(n, GrossExposure)}
    return pd.Series(rows, dtype=float).sort_index()


def scaled_by(weights: pd.Series, gross: pd.Series) -> pd.Series:
    """``weights`` times the gross exposure in force at each close (the last one noted at or
    before it; 1 before the first, and everywhere when ``gross`` is empty)."""
    if gross.empty or weights.empty:
        return weights
    at = gross.reindex(gross.index.union(weights.index)).ffill().reindex(weights.index)
    return weights * at.fillna(1.0).to_numpy()


def variant_positions(
    notes: Iterable[object], coin: str, start_ms: int, end_ms: int
) -> dict[str, pd.Series]:
    """Each MARS variant's position (after its safety mask) for ``coin`` at the closes in
    ``[start_ms, end_ms)``, from the controller's :class:`~bot.events.VariantWeights` notes."""
    rows: dict[str, dict[int, float]] = {}
    for note in notes:
        if isinstance(note, VariantWeights) and note.coin == coin and start_ms <= note.ts < end_ms:
            for name, position in note.positions:
                rows.setdefault(name, {})[note.ts] = position
    return {name: pd.Series(r, dtype=float).sort_index() for name, r in rows.items()}


def sleeve_timing(
    weights: Sequence[pd.Series],
    returns: pd.Series,
    bars_per_year: float,
    min_shift: int,
) -> SleeveTiming:
    """Exposure and timing of one coin over seeds (see the module docstring): ``weights``, one
    series per seed on decision closes; ``returns`` from :func:`next_bar_returns`. Decisions
    every seed made and whose next bar is known count."""
    return portfolio_timing({"": (weights, returns)}, bars_per_year, min_shift)


def portfolio_timing(
    sleeves: Mapping[str, tuple[Sequence[pd.Series], pd.Series]],
    bars_per_year: float,
    min_shift: int,
) -> SleeveTiming:
    """The mean sleeve of a portfolio (coin -> (seeds' weights, next-bar returns), the seeds in
    the same order for every coin): every coin on the decision closes all of them share, tested
    with the same shifts. A seed with no decision for some coin is left out of every coin."""
    columns = [list(w) for w, _ in sleeves.values()]
    seeds = min((len(c) for c in columns), default=0)
    keep = [i for i in range(seeds) if all(len(c[i]) for c in columns)]
    if not keep:
        return _summarise(np.zeros((len(columns), 0, 0)), np.zeros((len(columns), 0)), 1.0, 1)
    frames = [
        pd.concat([c[i] for i in keep], axis=1).T.dropna(axis=1) for c in columns
    ]  # seeds x closes
    known = [r.dropna().index for _, r in sleeves.values()]
    common = frames[0].columns
    for frame in frames[1:]:
        common = common.intersection(frame.columns)
    for index in known:
        common = common.intersection(index)
    common = common.sort_values()
    matrices = np.stack([f.loc[:, common].to_numpy(float) for f in frames])
    returns = np.stack([r.loc[common].to_numpy(float) for _, r in sleeves.values()])
    return _summarise(matrices, returns, bars_per_year, min_shift)


def min_shift_bars(timeframe: str, days: int = MIN_SHIFT_DAYS) -> int:
    """The shortest shift the test uses: ``days`` in bars of ``timeframe``."""
    return bars_in_days(days, timeframe)


def bars_per_year(timeframe: str) -> float:
    """Bars of ``timeframe`` in 365 days."""
    return 365 * DAY_MS / timeframe_ms(timeframe)


def _summarise(
    weights: np.ndarray, returns: np.ndarray, per_year: float, min_shift: int
) -> SleeveTiming:
    """``weights`` coins x seeds x n, ``returns`` coins x n: the mean over coins of each coin's
    exposure and its seeds' mean timing, with the shift test (on the rows that move)."""
    coins, seeds, n = weights.shape
    if n == 0:
        nan = float("nan")
        return SleeveTiming(0, seeds, nan, nan, nan, nan, None, None, nan, nan, nan)
    centred = returns - returns.mean(axis=1, keepdims=True)
    mean_w = weights.mean(axis=2)  # coins x seeds
    moving = np.ptp(weights, axis=2) > 0  # a row that never moves adds exactly 0, shifted or not
    deviations = np.where(moving[..., None], weights - mean_w[..., None], 0.0)

    per_seed = np.einsum("csn,cn->s", deviations, centred) / (n * coins)
    observed = float(per_seed.mean())
    shifts = np.arange(min_shift, n - min_shift + 1)
    if len(shifts) and moving.any():
        # every circular shift k at once: sum_c sum_t w[c, t - k] r[c, t], over the seeds' sum
        spectrum = np.conj(np.fft.rfft(deviations.sum(axis=1), n)) * np.fft.rfft(centred, n)
        null = np.fft.irfft(spectrum.sum(axis=0), n)[shifts] / (n * coins * seeds)
        p_value: float | None = float((1 + np.count_nonzero(null >= observed)) / (1 + len(null)))
        p_below: float | None = float((1 + np.count_nonzero(null <= observed)) / (1 + len(null)))
        low, high = (float(q) * per_year for q in np.quantile(null, [0.05, 0.95]))
    else:
        p_value = p_below = None
        low = high = float("nan")
    mean_r = returns.mean(axis=1)  # per coin
    return SleeveTiming(
        decisions=n,
        seeds=seeds,
        held=float(mean_r.mean() * per_year),
        mean_weight=float(mean_w.mean()),
        exposure=float((mean_w.mean(axis=1) * mean_r).mean() * per_year),
        timing=observed * per_year,
        p_value=p_value,
        p_value_below=p_below,
        null_low=low,
        null_high=high,
        seeds_positive=float(np.mean(per_seed > 0)) if seeds else float("nan"),
    )
