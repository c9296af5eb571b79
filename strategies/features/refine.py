"""Refinement: causal rolling normalisation and rolling PCA of the selected metrics.

One kernel, :class:`Refiner`, serves training, backtest and live alike: the batch feature path
and the bar-by-bar path both call :meth:`Refiner.step` with the same inputs in the same order, so
their outputs are bit-identical (DESIGN property 4).

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
at every step, never kept as running totals, so no rounding drift builds up and the same window
always gives the same bits. The covariance and projection are plain numpy reductions and a
non-optimised ``einsum`` (no BLAS call), whose summation order is fixed.

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

    def window(self) -> np.ndarray:
        """The stored rows, oldest first (a view)."""
        end = self._slot + self.capacity + 1
        return self._buffer[end - self.rows : end]


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
        x = self.transform(latest)
        day = int(ts) // DAY_MS
        self._values.put(day, x)
        self.z = zscore(x, self._values.window())
        self._scores.put(day, self.z)
        if self._scores.days_seen < self.params.min_periods:
            self.features = np.zeros(self._k, dtype="float64")
            self.ready = False
            self.explained_variance = math.nan
            return
        self.ready = True
        self.features, self.explained_variance = project(
            self._scores.window(), self.z, self._k, self._reference
        )

    def transform(self, latest: np.ndarray) -> np.ndarray:
        """The fitted per-metric transform (log where chosen; non-positive values -> NaN)."""
        x = np.array(latest, dtype="float64")
        if self._log.any():
            logged = x[self._log]
            with np.errstate(invalid="ignore", divide="ignore"):
                x[self._log] = np.where(logged > 0, np.log(logged), np.nan)
        return x


def zscore(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per column over ``window`` (rows = days, NaN = unknown).

    0 where ``x`` is unknown, a column has fewer than 2 known values, or it has no spread.
    A window without unknown values takes a shorter path with the same arithmetic (and bits).
    """
    if not np.isnan(window).any():
        n = window.shape[0]
        mean = window.sum(axis=0) / max(n, 1)
        deviation = window - mean
        std = np.sqrt((deviation * deviation).sum(axis=0) / max(n, 1))
        spread = window.max(axis=0) > window.min(axis=0)
        usable = np.isfinite(x) & (n >= 2) & spread & (std > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(usable, (x - mean) / np.where(usable, std, 1.0), 0.0)
    known = np.isfinite(window)
    count = known.sum(axis=0)
    filled = np.where(known, window, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    deviation = np.where(known, window - mean, 0.0)
    std = np.sqrt((deviation * deviation).sum(axis=0) / np.maximum(count, 1))
    spread = np.where(known, window, -np.inf).max(axis=0) > np.where(known, window, np.inf).min(
        axis=0
    )
    usable = np.isfinite(x) & (count >= 2) & spread & (std > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, (x - mean) / np.where(usable, std, 1.0), 0.0)


def principal_axes(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending, clipped at 0) and eigenvectors (columns) of ``scores``."""
    n = scores.shape[0]
    mean = scores.sum(axis=0) / n
    centred = scores - mean
    # einsum without ``optimize`` runs numpy's own loops, never BLAS: a fixed summation order.
    covariance = np.einsum("ij,ik->jk", centred, centred, optimize=False) / max(n - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return mean, np.maximum(eigenvalues[::-1], 0.0), eigenvectors[:, ::-1]


def project(
    scores: np.ndarray, z: np.ndarray, k: int, reference: np.ndarray
) -> tuple[np.ndarray, float]:
    """Features of ``z`` on the ``k`` leading axes of ``scores``, and the share they explain.

    The axes are sign-aligned with ``reference`` (``k`` rows). No variance at all gives zeros
    and NaN.
    """
    if k == 0:
        return np.zeros(0, dtype="float64"), math.nan
    mean, eigenvalues, eigenvectors = principal_axes(scores)
    total = float(eigenvalues.sum())
    if not total > 0:
        return np.zeros(k, dtype="float64"), math.nan
    axes = eigenvectors[:, :k]
    flip = (axes * reference.T).sum(axis=0) < 0
    axes = np.where(flip, -axes, axes)
    features = ((z - mean)[:, None] * axes).sum(axis=0)
    return features, float(eigenvalues[:k].sum()) / total


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
    for ts, row in zip(step_ts, values, strict=True):
        probe.step(int(ts), row)
        if probe.days_seen >= min_periods:
            daily[int(ts) // DAY_MS] = probe.z.copy()
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
