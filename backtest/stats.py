"""Telling an edge from luck: bootstrap intervals, the deflated Sharpe ratio and PBO.

Everything here works on **daily** simple returns (:func:`backtest.metrics.daily_returns`).

* :func:`block_bootstrap_ci` - a circular moving-block bootstrap over days (Politis & Romano
  1992; Künsch 1989): resample blocks of ``block_days`` consecutive days, with wrap-around, until
  the series' length is reached; recompute the statistic (ARR, Sortino, Sharpe as defined in
  :mod:`backtest.metrics`) on each resample; report the percentile interval. Blocks keep the
  serial dependence (volatility clusters) that an i.i.d. bootstrap would destroy.
  :func:`paired_bootstrap_ci` draws the *same* days for two series and bootstraps the difference
  of a statistic (the strategy minus a baseline), which is what "has an edge over" means.
* :func:`probabilistic_sharpe_ratio` (Bailey & López de Prado 2012, "The Sharpe ratio efficient
  frontier", eq. 9): ``PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4
  SR^2))`` with the *non-annualised* Sharpe ratio ``SR`` of ``T`` returns, their skewness ``g3``
  and their **raw** kurtosis ``g4`` (3 for a normal distribution, *not* the excess kurtosis 0:
  passing excess kurtosis would shrink the denominator and overstate the confidence).
* :func:`expected_max_sharpe` and :func:`deflated_sharpe_ratio` (Bailey & López de Prado 2014,
  "The Deflated Sharpe Ratio", eq. 2): the best of ``N`` trials whose Sharpe ratios have variance
  ``V`` is expected to reach ``SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 -
  1/(N e)))`` by luck alone (``gamma`` the Euler-Mascheroni constant); ``DSR = PSR(SR0)``. ``N``
  must count every trial honestly: policies x configurations x seeds tried, earlier attempts
  included.
* :func:`probability_of_backtest_overfitting` (Bailey, Borwein, López de Prado & Zhu 2017, "The
  probability of backtest overfitting", combinatorially symmetric cross-validation, CSCV): split
  the ``T x N`` matrix of the trials' returns into ``S`` blocks of rows; for every choice of
  ``S/2`` blocks as the in-sample set (the rest out of sample), pick the trial with the best
  in-sample Sharpe ratio and find its relative rank ``w`` out of sample (``rank / (N + 1)``,
  rank 1 the worst); ``logit = ln(w / (1 - w))``. PBO is the share of splits whose logit is
  ``<= 0``: how often the in-sample winner is at or below the out-of-sample median.

Sharpe ratios are per day unless a name says "annual" (x sqrt(365)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

DAYS_PER_YEAR = 365
EULER_GAMMA = 0.5772156649015329
_ZERO = 1e-12

Statistic = Callable[[np.ndarray], float]


# --- statistics of a return series --------------------------------------------------------------


def arr(returns: np.ndarray) -> float:
    """Accumulated return: ``prod(1 + r) - 1``."""
    return float(np.prod(1.0 + np.asarray(returns, float)) - 1.0)


def sharpe(returns: np.ndarray) -> float:
    """Annualised Sharpe ratio ``mean / std(ddof=1) * sqrt(365)`` (NaN when undefined)."""
    r = np.asarray(returns, float)
    if len(r) < 2:
        return math.nan
    std = float(r.std(ddof=1))
    return float(r.mean()) / std * math.sqrt(DAYS_PER_YEAR) if std > _ZERO else math.nan


def sortino(returns: np.ndarray) -> float:
    """Annualised Sortino ratio ``mean / sqrt(mean(min(r, 0)^2)) * sqrt(365)`` (the paper's SR)."""
    r = np.asarray(returns, float)
    if not len(r):
        return math.nan
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    return float(r.mean()) / downside * math.sqrt(DAYS_PER_YEAR) if downside > _ZERO else math.nan


STATISTICS: dict[str, Statistic] = {"arr": arr, "sortino": sortino, "sharpe": sharpe}
"""The statistics the walk-forward reports with bootstrap intervals."""


# --- block bootstrap ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def block_indices(n: int, block_days: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n)`` day indices of circular moving-block resamples of a length-``n``
    series: blocks of ``block_days`` consecutive days (wrapping around), starts uniform."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty series")
    length = max(1, min(int(block_days), n))
    blocks = -(-n // length)
    starts = rng.integers(0, n, size=(resamples, blocks))
    offsets = np.arange(length)
    return ((starts[:, :, None] + offsets) % n).reshape(resamples, -1)[:, :n]


def block_bootstrap_ci(
    returns: np.ndarray,
    statistic: Statistic,
    *,
    block_days: int = 10,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``statistic`` of ``returns`` and its circular block-bootstrap percentile interval."""
    r = np.asarray(returns, float)
    index = block_indices(len(r), block_days, resamples, np.random.default_rng(seed))
    draws = np.array([statistic(r[row]) for row in index])
    return _interval(statistic(r), draws, level)


def paired_bootstrap_ci(
    returns: np.ndarray,
    other: np.ndarray,
    statistic: Statistic,
    *,
    block_days: int = 10,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``statistic(returns) - statistic(other)`` (same days) and its interval, both series
    resampled on the *same* blocks of days."""
    a, b = np.asarray(returns, float), np.asarray(other, float)
    if a.shape != b.shape:
        raise ValueError(f"paired series differ in length: {len(a)} and {len(b)} days")
    index = block_indices(len(a), block_days, resamples, np.random.default_rng(seed))
    draws = np.array([statistic(a[row]) - statistic(b[row]) for row in index])
    return _interval(statistic(a) - statistic(b), draws, level)


def _interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return Interval(estimate, math.nan, math.nan, level)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), level)


# --- probabilistic and deflated Sharpe ratio ----------------------------------------------------


@dataclass(frozen=True)
class SharpeMoments:
    """What the PSR needs of a return series: per-period Sharpe, length, skewness, raw
    kurtosis."""

    sharpe: float
    n: int
    skew: float
    kurtosis: float
    """Raw (Pearson) kurtosis: 3 for a normal distribution."""


def sharpe_moments(returns: np.ndarray) -> SharpeMoments:
    """Per-day Sharpe ratio (``ddof=1``), skewness and **raw** kurtosis (biased moment
    estimates, as in the papers) of ``returns``."""
    r = np.asarray(returns, float)
    std = float(r.std(ddof=1)) if len(r) >= 2 else 0.0
    sr = float(r.mean()) / std if std > _ZERO else math.nan
    if len(r) < 3 or std <= _ZERO:
        return SharpeMoments(sr, len(r), math.nan, math.nan)
    skew = float(sps.skew(r, bias=True))
    kurtosis = float(sps.kurtosis(r, fisher=False, bias=True))
    return SharpeMoments(sr, len(r), skew, kurtosis)


def probabilistic_sharpe_ratio(
    sharpe_ratio: float, benchmark: float, n: int, skew: float, kurtosis: float
) -> float:
    """PSR: the probability that the true per-period Sharpe ratio exceeds ``benchmark``, given
    an estimate ``sharpe_ratio`` from ``n`` returns with ``skew`` and **raw** ``kurtosis``."""
    if n < 2 or not all(map(math.isfinite, (sharpe_ratio, benchmark, skew, kurtosis))):
        return math.nan
    variance = 1.0 - skew * sharpe_ratio + (kurtosis - 1.0) / 4.0 * sharpe_ratio**2
    if variance <= 0:
        return math.nan
    z = (sharpe_ratio - benchmark) * math.sqrt(n - 1) / math.sqrt(variance)
    return float(sps.norm.cdf(z))


def expected_max_sharpe(trials: int, variance: float) -> float:
    """``SR0``: the expected maximum of ``trials`` Sharpe ratios of variance ``variance`` when
    every true Sharpe ratio is zero (0 for a single trial)."""
    if trials < 1:
        raise ValueError(f"the number of trials must be >= 1, got {trials}")
    if trials == 1 or variance <= 0:
        return 0.0
    z = (1.0 - EULER_GAMMA) * sps.norm.ppf(1.0 - 1.0 / trials) + EULER_GAMMA * sps.norm.ppf(
        1.0 - 1.0 / (trials * math.e)
    )
    return float(math.sqrt(variance) * z)


def deflated_sharpe_ratio(
    returns: np.ndarray, trials: int, trial_sharpes: Sequence[float]
) -> dict[str, float]:
    """DSR of the selected strategy's ``returns``, after ``trials`` trials whose per-day Sharpe
    ratios were ``trial_sharpes`` (their variance sets ``SR0``; at least the ones we have).

    Returns ``dsr``, ``psr`` (against 0), ``sr0``, the per-day ``sharpe``, ``skew``, raw
    ``kurtosis``, ``n`` and ``trials``.
    """
    moments = sharpe_moments(returns)
    finite = np.array([s for s in trial_sharpes if math.isfinite(s)])
    variance = float(finite.var(ddof=1)) if len(finite) >= 2 else 0.0
    sr0 = expected_max_sharpe(max(trials, 1), variance)
    args = (moments.n, moments.skew, moments.kurtosis)
    return {
        "dsr": probabilistic_sharpe_ratio(moments.sharpe, sr0, *args),
        "psr": probabilistic_sharpe_ratio(moments.sharpe, 0.0, *args),
        "sr0": sr0,
        "sharpe": moments.sharpe,
        "skew": moments.skew,
        "kurtosis": moments.kurtosis,
        "n": moments.n,
        "trials": int(trials),
        "trial_sharpe_variance": variance,
    }


# --- probability of backtest overfitting --------------------------------------------------------


@dataclass(frozen=True)
class PBOResult:
    """CSCV's outcome: PBO and the logits of every split."""

    pbo: float
    logits: np.ndarray
    splits: int
    blocks: int
    trials: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready summary."""
        return {
            "pbo": self.pbo,
            "splits": self.splits,
            "blocks": self.blocks,
            "trials": self.trials,
            "median_logit": float(np.median(self.logits)) if len(self.logits) else math.nan,
        }


def probability_of_backtest_overfitting(
    returns: np.ndarray, blocks: int = 16, metric: Statistic | None = None
) -> PBOResult:
    """PBO by CSCV of the ``(T, N)`` matrix ``returns`` (one column per trial: a seed or a
    configuration), with ``blocks`` row blocks (even; rows that do not fill the last block are
    dropped from the end). ``metric`` ranks trials (default: per-day Sharpe, ``ddof=1``; an
    undefined value ranks lowest). Ties in the out-of-sample rank count half (mid-rank)."""
    matrix = np.asarray(returns, float)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError("PBO needs a (T, N) matrix with at least two trials (columns)")
    if blocks < 2 or blocks % 2:
        raise ValueError(f"blocks must be an even number >= 2, got {blocks}")
    size = matrix.shape[0] // blocks
    if size < 2:
        raise ValueError(f"{matrix.shape[0]} rows are too few for {blocks} blocks")
    splits = np.array(list(itertools.combinations(range(blocks), blocks // 2)))
    chosen = np.zeros((len(splits), blocks), bool)
    chosen[np.arange(len(splits))[:, None], splits] = True
    block_rows = matrix[: blocks * size].reshape(blocks, size, -1)
    if metric is None:  # all the splits at once from per-block sums
        in_scores = _sharpe_of_splits(block_rows, chosen)
        out_scores = _sharpe_of_splits(block_rows, ~chosen)
    else:
        in_scores = _scores_of_splits(block_rows, chosen, metric)
        out_scores = _scores_of_splits(block_rows, ~chosen, metric)
    trials = matrix.shape[1]
    best = np.argmax(in_scores, axis=1)  # the first of equal winners
    ranks = sps.rankdata(out_scores, axis=1)  # 1 = worst, mid-rank for ties
    w = ranks[np.arange(len(splits)), best] / (trials + 1)
    values = np.log(w / (1.0 - w))
    return PBOResult(float(np.mean(values <= 0)), values, len(values), blocks, trials)


def _sharpe_of_splits(block_rows: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Per-day Sharpe (``ddof=1``) of every trial over the blocks each split ``chosen``
    (``(splits, blocks)`` booleans) holds: ``(splits, trials)``, undefined as ``-inf``. Sums
    are taken of values centred per trial, so the variance loses no precision to the mean."""
    centre = block_rows.mean(axis=(0, 1))
    centred = block_rows - centre
    sums, squares = centred.sum(axis=1), (centred**2).sum(axis=1)  # (blocks, trials)
    weights = chosen.astype(float)
    n = weights.sum(axis=1, keepdims=True) * block_rows.shape[1]
    total = weights @ sums
    mean = total / n
    variance = np.maximum((weights @ squares - total * mean) / (n - 1), 0.0)
    std = np.sqrt(variance)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = (mean + centre) / std
    return np.where(std > _ZERO, sharpe, -np.inf)


def _scores_of_splits(block_rows: np.ndarray, chosen: np.ndarray, score: Statistic) -> np.ndarray:
    """``score`` of every trial over the blocks of each split (one call per split and trial)."""
    return np.array([_scores(np.concatenate(block_rows[mask]), score) for mask in chosen])


def _scores(matrix: np.ndarray, score: Statistic) -> np.ndarray:
    values = np.array([score(matrix[:, j]) for j in range(matrix.shape[1])])
    return np.where(np.isfinite(values), values, -np.inf)
