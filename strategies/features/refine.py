"""Refinement: causal rolling normalisation and rolling PCA of the selected metrics.

One kernel, :class:`Refiner`, serves training, backtest and live alike: the batch feature path
calls :meth:`Refiner.steps` with every step of a history at once and the bar-by-bar path calls
:meth:`Refiner.step` (a batch of one), with the same inputs in the same order, and their outputs
are bit-identical (DESIGN property 4).

A *step* happens at a bar close where at least one selected metric has a new value known; the
caller passes the vector of the latest known value of every selected metric (NaN while one is
not known yet). Between steps the features are carried forward. A step:

1. transforms the vector (``log`` for metrics that the fit found strictly positive and heavy
   tailed; a non-positive value of such a metric counts as missing);
2. stores it as *today's row* of a window of ``norm_window_days`` rows. Rows are keyed by the UTC
   day of the step: a second step on the same day (metrics with different publication lags)
   replaces today's row instead of adding one, so a window of ``N`` rows is ``N`` days of
   information whatever the lags, and the config's "days" mean days;
3. z-scores it against that window (today included; a column with fewer than 2 known values or
   no spread gives 0, and so does a missing value);
4. stores ``z`` as today's row of a window of ``pca_window_days`` rows, and projects the centred
   ``z`` on the ``k`` leading eigenvectors of that window's covariance (``numpy.linalg.eigh``).

Causality: a step reads only its own input and rows written by earlier steps, so a feature at
time ``t`` depends on nothing known after ``t``. Everything a step needs lives in two bounded ring
buffers, so the cost of a step does not grow with history. Sums are recomputed over the window
at every step, never kept as running totals, so no rounding drift builds up.

Same bits in a batch of one or of thousands: the steps of a batch are stacked, each with its own
windows (rows gathered from the ring buffers and the batch's earlier steps, missing rows padded
in front). Every sum over a window is a matrix product, computed one stacked step at a time by
BLAS (:func:`_window_sum`, the covariances), and the eigenvectors one stacked matrix at a time
by LAPACK (``numpy.linalg.eigh``): the same call, with the same shapes, for a batch of one.
Short sums over the metrics add them one after the other (:func:`_row_sum`); everything else
is element-wise, or a maximum.

Width stability: ``k`` is fixed at fit time, as the number of components explaining at least
``pca_variance`` of the variance of the z-vectors on the training window, so the network input
width never changes. At each step the ``k`` leading eigenvectors are sign-aligned with the
reference components of that fit (dot product >= 0), since an eigenvector's sign is arbitrary;
the share of variance the ``k`` components explain in the current window is tracked as
``explained_variance``. (Sign alignment does not undo a swap of two components whose eigenvalues
cross; that is inherent to rolling PCA and shows up as a jump in the features.)

Before ``min_periods`` days of rows, the features are 0 and ``ready`` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bot.timeframes import DAY_MS

#: Skewness above which a strictly positive metric is log-transformed (if the log helps).
HEAVY_TAIL_SKEW = 1.0


@dataclass(frozen=True)
class RefinerParams:
    """Everything a :class:`Refiner` needs; fitted by :func:`fit_refiner`, JSON-serialisable.

    ``reference_components`` has ``n_components`` rows of ``len(metric_ids)`` entries: the
    training-fit eigenvectors each step's components are sign-aligned with.
    ``fit_variance_ratios`` is the share of variance of every component on the training window.
    """

    metric_ids: tuple[str, ...]
    log_transform: tuple[bool, ...]
    n_components: int
    reference_components: tuple[tuple[float, ...], ...]
    norm_window_days: int
    pca_window_days: int
    min_periods: int
    pca_variance: float
    fit_variance_ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        m = len(self.metric_ids)
        if len(self.log_transform) != m:
            raise ValueError("log_transform needs one flag per metric")
        if not 0 <= self.n_components <= m:
            raise ValueError(f"n_components must be in [0, {m}], got {self.n_components}")
        if self.reference_components and (
            len(self.reference_components) != self.n_components
            or any(len(row) != m for row in self.reference_components)
        ):
            raise ValueError("reference_components must be n_components rows of len(metric_ids)")
        if self.norm_window_days < 2 or self.pca_window_days < 2 or self.min_periods < 2:
            raise ValueError("windows and min_periods must be >= 2")

    @property
    def explained_variance_at_fit(self) -> float:
        """Share of training variance explained by the kept ``k`` components."""
        return float(sum(self.fit_variance_ratios[: self.n_components]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats round-trip exactly through ``json``)."""
        return {
            "metric_ids": list(self.metric_ids),
            "log_transform": list(self.log_transform),
            "n_components": self.n_components,
            "reference_components": [list(row) for row in self.reference_components],
            "norm_window_days": self.norm_window_days,
            "pca_window_days": self.pca_window_days,
            "min_periods": self.min_periods,
            "pca_variance": self.pca_variance,
            "fit_variance_ratios": list(self.fit_variance_ratios),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinerParams:
        """Inverse of :meth:`to_dict`."""
        return cls(
            metric_ids=tuple(data["metric_ids"]),
            log_transform=tuple(bool(b) for b in data["log_transform"]),
            n_components=int(data["n_components"]),
            reference_components=tuple(
                tuple(float(v) for v in row) for row in data["reference_components"]
            ),
            norm_window_days=int(data["norm_window_days"]),
            pca_window_days=int(data["pca_window_days"]),
            min_periods=int(data["min_periods"]),
            pca_variance=float(data["pca_variance"]),
            fit_variance_ratios=tuple(float(v) for v in data["fit_variance_ratios"]),
        )


class DayWindow:
    """The last ``capacity`` day-rows of ``width`` floats, in a ring buffer written twice.

    Each row is stored at ``slot`` and ``slot + capacity`` of a ``2 * capacity`` buffer, so the
    window in chronological order is always one contiguous slice: no copy, O(1) per write.
    """

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = capacity
        self._buffer = np.zeros((2 * capacity, width), dtype="float64")
        self._slot = capacity - 1
        self._day: int | None = None
        self.rows = 0
        self.days_seen = 0

    def put(self, day: int, row: np.ndarray) -> None:
        """Write ``row`` as day ``day``: replaces the newest row when it is the same day."""
        if day != self._day:
            self._slot = (self._slot + 1) % self.capacity
            self._day = day
            self.rows = min(self.rows + 1, self.capacity)
            self.days_seen += 1
        self._buffer[self._slot] = row
        self._buffer[self._slot + self.capacity] = row

    def put_many(self, days: np.ndarray, rows: np.ndarray) -> None:
        """:meth:`put` each of ``rows (S, width)`` as its day of ``days (S,)`` (ascending), in
        order: the same buffer, slot and counts, with only each day's last row written, and
        only the newest ``capacity`` of those (the ones the puts would leave)."""
        days = np.asarray(days, dtype=np.int64)
        if len(days) == 0:
            return
        last_of_day = np.r_[days[1:] != days[:-1], True]
        new = int(last_of_day.sum()) - int(days[0] == self._day)  # days that open a row
        kept = np.flatnonzero(last_of_day)[-self.capacity :]
        capacity = self.capacity
        # The slot of the i-th kept row: the newest lands at the slot the puts end on.
        end_slot = (self._slot + new) % capacity
        slots = (end_slot - np.arange(len(kept))[::-1]) % capacity
        self._buffer[slots] = self._buffer[slots + capacity] = rows[kept]
        self._slot = end_slot
        self._day = int(days[-1])
        self.rows = min(self.rows + new, capacity)
        self.days_seen += new

    def window(self) -> np.ndarray:
        """The stored rows, oldest first (a view)."""
        end = self._slot + self.capacity + 1
        return self._buffer[end - self.rows : end]


@dataclass(frozen=True)
class RefinedSteps:
    """What a batch of steps gave, per step: ``features (S, k)``, ``ready (S,)``,
    ``explained_variance (S,)``, the z-vectors ``z (S, m)`` and ``days_seen (S,)``."""

    features: np.ndarray
    ready: np.ndarray
    explained_variance: np.ndarray
    z: np.ndarray
    days_seen: np.ndarray


PASS_ELEMENTS = 250_000
"""Stacked window entries per pass (steps x window x m): bounds a pass's memory (the results
do not depend on how the steps are split into passes)."""


class Refiner:
    """The step kernel: rolling z-score then rolling PCA (see the module docstring)."""

    def __init__(self, params: RefinerParams) -> None:
        self.params = params
        m = len(params.metric_ids)
        self._log = np.array(params.log_transform, dtype=bool)
        self._k = params.n_components
        self._reference = np.array(params.reference_components, dtype="float64").reshape(self._k, m)
        self._values = DayWindow(params.norm_window_days, m)
        self._scores = DayWindow(params.pca_window_days, m)
        self.features = np.zeros(self._k, dtype="float64")
        self.z = np.zeros(m, dtype="float64")
        self.ready = False
        self.explained_variance = math.nan

    @property
    def days_seen(self) -> int:
        """Number of distinct days with at least one step so far."""
        return self._scores.days_seen

    def step(self, ts: int, latest: np.ndarray) -> None:
        """Take the latest known values at time ``ts`` (epoch ms) and update the features."""
        self.steps(np.array([int(ts)], dtype="int64"), np.asarray(latest, dtype="float64")[None])

    def steps(self, ts: np.ndarray, latest: np.ndarray) -> RefinedSteps:
        """Take many steps at once (times ``(S,)`` ascending, latest values ``(S, m)``): the
        same state and, per step, the same outputs as :meth:`step` one at a time."""
        ts = np.asarray(ts, dtype="int64")
        m = self._reference.shape[1]
        latest = np.asarray(latest, dtype="float64").reshape(len(ts), m)
        size = max(1, PASS_ELEMENTS // (self.params.pca_window_days * m + 1))
        parts = [
            self._pass(ts[i : i + size], latest[i : i + size]) for i in range(0, len(ts), size)
        ]
        if not parts:
            empty = np.zeros((0, self._k))
            return RefinedSteps(
                empty, np.zeros(0, bool), np.zeros(0), np.zeros((0, m)), np.zeros(0, "int64")
            )
        return RefinedSteps(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    def _pass(self, ts: np.ndarray, latest: np.ndarray) -> tuple[np.ndarray, ...]:
        days = ts // DAY_MS
        x = self.transform(latest)
        new_day = _new_days(days, self._values)
        values, _ = _stacked_windows(self._values, x, days, new_day, math.nan)
        z = zscores(values, x)
        scores, rows = _stacked_windows(self._scores, z, days, new_day, 0.0)
        days_seen = self._scores.days_seen + np.cumsum(new_day)
        ready = days_seen >= self.params.min_periods
        features = np.zeros((len(ts), self._k), dtype="float64")
        variance = np.full(len(ts), math.nan)
        if ready.all() and self._k:  # past the warm-up: no copies of the windows
            features, variance = projections(scores, rows, z, self._k, self._reference)
        elif ready.any() and self._k:
            features[ready], variance[ready] = projections(
                scores[ready], rows[ready], z[ready], self._k, self._reference
            )
        self._values.put_many(days, x)
        self._scores.put_many(days, z)
        self.z = z[-1].copy()
        self.ready = bool(ready[-1])
        self.features = features[-1].copy()
        self.explained_variance = float(variance[-1])
        return features, ready, variance, z, days_seen

    def transform(self, latest: np.ndarray) -> np.ndarray:
        """The fitted per-metric transform (log where chosen; non-positive values -> NaN), of
        one vector or of stacked ones."""
        x = np.array(latest, dtype="float64")
        if self._log.any():
            logged = x[..., self._log]
            with np.errstate(invalid="ignore", divide="ignore"):
                x[..., self._log] = np.where(logged > 0, np.log(logged), np.nan)
        return x


def _new_days(days: np.ndarray, window: DayWindow) -> np.ndarray:
    """Whether each step opens a new day row (else it replaces the row of its day)."""
    previous = np.r_[-1 if window._day is None else window._day, days[:-1]]
    return (days != previous) | (np.arange(len(days)) == 0) & (window._day is None)


def _stacked_windows(
    window: DayWindow, rows: np.ndarray, days: np.ndarray, new_day: np.ndarray, pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each step's window ``(S, capacity, m)``, oldest first, as the ring buffer would hold it
    after the step: the buffer's rows, then the batch's rows (a day's later row replacing its
    earlier one), missing rows in front filled with ``pad``; and which rows are real."""
    capacity = window.capacity
    stored = window.window()
    held, count = len(stored), len(rows)
    # Day ids of the candidate rows (stored rows, then the batch's); the batch's first row
    # shares the newest stored row's id when it is the same day.
    day_id = held - 1 + np.cumsum(new_day)
    last = np.empty(int(day_id[-1]) + 1, dtype="int64")
    last[:held] = np.arange(held)
    ends = np.r_[day_id[1:] != day_id[:-1], True]
    last[day_id[ends]] = held + np.flatnonzero(ends)
    earlier = day_id[:, None] + np.arange(1 - capacity, 0)[None, :]
    index = np.where(earlier >= 0, last[np.maximum(earlier, 0)], -1)
    index = np.concatenate((index, (held + np.arange(count))[:, None]), axis=1)
    width = rows.shape[1]
    candidates = np.concatenate((stored, rows, np.full((1, width), pad)))
    # ``take`` gathers whole rows (several times faster than ``candidates[index]``); index -1
    # wraps to the pad row, last.
    return np.take(candidates, index, axis=0), index >= 0


def _row_sum(stacked: np.ndarray) -> np.ndarray:
    """Sums over axis 1 of ``stacked (S, n, ...)``, adding row 0, then row 1, ... in that
    order for every step (a running sum: the same bits whatever ``S``)."""
    total = stacked[:, 0].copy()
    for i in range(1, stacked.shape[1]):
        total += stacked[:, i]
    return total


def _window_sum(stacked: np.ndarray) -> np.ndarray:
    """Sums over the window axis of ``stacked (S, n, m)``: one BLAS product with a row of ones
    per step (the same call, and bits, for a batch of one)."""
    ones = np.ones((1, stacked.shape[1]), dtype=stacked.dtype)
    return np.matmul(ones, np.ascontiguousarray(stacked))[:, 0]


def zscores(windows: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per column of stacked windows ``(S, n, m)`` (rows = days, NaN =
    unknown) and values ``(S, m)``: 0 where ``x`` is unknown, a column has fewer than 2 known
    values, or it has no spread. Sums run row after row (module docstring)."""
    # Every value known (a finite sum says so; an overflowing one only takes the masked path,
    # which gives the same answer): then every mask below is the identity, and is skipped.
    everything = bool(np.isfinite(np.sum(windows)))
    known = np.ones((), dtype=bool) if everything else np.isfinite(windows)
    count = np.full(x.shape, windows.shape[1]) if everything else known.sum(axis=1)
    divisor = np.maximum(count, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        filled = windows if everything else np.where(known, windows, 0.0)
        mean = _window_sum(filled) / divisor
        squares = windows - mean[:, None]
        if not everything:
            squares[~known] = 0.0
        np.multiply(squares, squares, out=squares)  # in place: one window-sized temporary
        std = np.sqrt(_window_sum(squares) / divisor)
        spread = _spread(windows if everything else np.where(known, windows, np.nan))
        usable = np.isfinite(x) & (count >= 2) & spread & (std > 0)
        return np.where(usable, (x - mean) / np.where(usable, std, 1.0), 0.0)


def _spread(windows: np.ndarray) -> np.ndarray:
    """Whether each column of stacked windows ``(S, n, m)`` holds two different known values
    (NaN = unknown): its largest known value above its smallest. Read along a time-contiguous
    copy (a reduction along the middle axis of ``(S, n, m)`` is several times slower);
    maxima and minima are exact, so the answer does not depend on the layout."""
    by_column = np.ascontiguousarray(windows.transpose(0, 2, 1))
    return np.fmax.reduce(by_column, axis=2) > np.fmin.reduce(by_column, axis=2)


def zscore(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """:func:`zscores` of one vector ``x (m,)`` against one window ``(n, m)``."""
    return zscores(np.asarray(window, dtype="float64")[None], np.asarray(x, dtype="float64")[None])[
        0
    ]


def projections(
    scores: np.ndarray, rows: np.ndarray, z: np.ndarray, k: int, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(S, k)`` of each ``z (S, m)`` on the ``k`` leading axes of its window of
    z-vectors ``scores (S, n, m)`` (real rows where ``rows (S, n)``, zeros elsewhere),
    sign-aligned with ``reference (k, m)``, and the share of variance they explain (NaN, and
    zero features, for a window without variance)."""
    count = rows.sum(axis=1)[:, None]
    mean = _window_sum(scores) / count  # missing rows hold zeros
    centred = scores - mean[:, None]
    if not rows.all():
        centred[~rows] = 0.0
    # One matrix product per step (BLAS ``gemm`` on each stacked pair, as for a batch of one).
    transposed = np.ascontiguousarray(centred.transpose(0, 2, 1))
    covariance = np.matmul(transposed, centred) / np.maximum(count - 1, 1)[:, :, None]
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues[:, ::-1], 0.0)
    axes = eigenvectors[:, :, ::-1][:, :, :k]
    total = _row_sum(eigenvalues)
    flip = _row_sum(axes * reference.T[None]) < 0
    axes = np.where(flip[:, None, :], -axes, axes)
    features = _row_sum((z - mean)[:, :, None] * axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = _row_sum(eigenvalues[:, :k]) / total
    varied = total > 0
    return np.where(varied[:, None], features, 0.0), np.where(varied, share, math.nan)


def principal_axes(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending, clipped at 0) and eigenvectors (columns) of ``scores``
    (the training fit's PCA)."""
    n = scores.shape[0]
    mean = scores.sum(axis=0) / n
    centred = scores - mean
    covariance = np.einsum("ij,ik->jk", centred, centred, optimize=False) / max(n - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return mean, np.maximum(eigenvalues[::-1], 0.0), eigenvectors[:, ::-1]


def heavy_tailed_positive(values: np.ndarray) -> bool:
    """Whether a metric should be log-transformed: strictly positive, skewed, and the log helps."""
    x = np.asarray(values, dtype="float64")
    x = x[np.isfinite(x)]
    if len(x) < 3 or x.min() <= 0 or np.ptp(x) == 0:
        return False
    raw = _skewness(x)
    return raw > HEAVY_TAIL_SKEW and abs(_skewness(np.log(x))) < abs(raw)


def fit_refiner(
    metric_ids: tuple[str, ...],
    step_ts: np.ndarray,
    step_values: np.ndarray,
    daily_values: np.ndarray,
    *,
    norm_window_days: int,
    pca_window_days: int,
    pca_variance: float,
    min_periods: int,
) -> RefinerParams:
    """Fit transforms, ``k`` and the reference components on the training window's steps.

    ``step_ts`` / ``step_values`` are the training window's steps (time, latest known values),
    as the feature pipeline produces them; ``daily_values`` (days x metrics, NaN = missing) are
    the raw observations the log transforms are decided on. The steps are replayed through a
    :class:`Refiner` (the same normalisation as serving) and the z-vector of every day past
    ``min_periods`` enters one PCA: ``k`` is the smallest number of components reaching
    ``pca_variance``. Raises ``ValueError`` when fewer than 2 such days exist. No metrics, or no
    variance at all, give ``k = 0``.
    """
    m = len(metric_ids)
    base = dict(
        metric_ids=metric_ids,
        norm_window_days=norm_window_days,
        pca_window_days=pca_window_days,
        min_periods=min_periods,
        pca_variance=pca_variance,
    )
    if m == 0:
        return RefinerParams(log_transform=(), n_components=0, reference_components=(), **base)
    values = np.asarray(step_values, dtype="float64").reshape(-1, m)
    observed = np.asarray(daily_values, dtype="float64").reshape(-1, m)
    log_transform = tuple(heavy_tailed_positive(observed[:, j]) for j in range(m))
    probe = Refiner(
        RefinerParams(log_transform=log_transform, n_components=0, reference_components=(), **base)
    )
    daily: dict[int, np.ndarray] = {}
    stepped = probe.steps(np.asarray(step_ts, dtype="int64"), values)
    for ts, z, days_seen in zip(step_ts, stepped.z, stepped.days_seen.tolist(), strict=True):
        if days_seen >= min_periods:
            daily[int(ts) // DAY_MS] = z
    if len(daily) < 2:
        raise ValueError(
            f"the training window gives {len(daily)} days of features after {min_periods} days "
            "of warm-up; at least 2 are needed to fit the PCA"
        )
    _, eigenvalues, eigenvectors = principal_axes(np.array(list(daily.values())))
    total = float(eigenvalues.sum())
    if not total > 0:
        return RefinerParams(
            log_transform=log_transform, n_components=0, reference_components=(), **base
        )
    ratios = eigenvalues / total
    k = int(np.searchsorted(np.cumsum(ratios), pca_variance - 1e-12) + 1)
    k = min(k, m)
    axes = eigenvectors[:, :k]
    # An eigenvector's sign is arbitrary: fix it so that its largest entry is positive.
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    return RefinerParams(
        log_transform=log_transform,
        n_components=k,
        reference_components=tuple(tuple(float(v) for v in axes[:, c]) for c in range(k)),
        fit_variance_ratios=tuple(float(r) for r in ratios),
        **base,
    )


def _skewness(x: np.ndarray) -> float:
    d = x - x.mean()
    var = float((d * d).mean())
    return float((d**3).mean()) / var**1.5 if var > 0 else 0.0
