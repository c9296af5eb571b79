"""Metric selection, as CryptoRLPM describes it, fitted on the training window and then frozen.

For every candidate metric and every horizon ``h`` (12, 24 and 48 days by default) we take the
Pearson correlation between the metric's daily value and the coin's *forward* return over the
next ``h`` days. In each horizon the ``per_horizon`` highest and ``per_horizon`` lowest
coefficients are picked; candidates are ranked by how many horizons picked them, then by their
mean absolute correlation, then by id (so ties always break the same way), and the first
``keep`` are kept. Only candidates picked at least once can be kept.

Timing of a pair. A daily value for day ``D`` (``observed_at`` = 00:00 UTC of ``D``) describes the
whole day and is known only after ``D`` ends, so the earliest decision it can inform is at the end
of ``D``. Its label is therefore the log return from the coin's close at the end of day ``D`` to
its close at the end of day ``D + h``. (Log returns: over 48 days crypto moves of +300% occur,
and Pearson on simple returns is dominated by them.)

Why the training window only. The labels are forward returns, i.e. the future: a selection that
looked at days after the training window would leak test-period returns into the choice of
features. A pair is used only if its day and both closes of its label lie inside
``[train_start_ms, train_end_ms]``, so the last ``h`` days of the window carry no label (the
DESIGN note: "the last 48 days of that window have no full label"). The result is a frozen
:class:`Selection` that travels with the Crypto Module's artifact.

Degenerate inputs are handled and recorded, never silently: a (metric, horizon) with fewer than
``min_obs`` labelled days, a metric constant on those days, or a coin whose returns are constant
gets no coefficient and an :class:`Exclusion` with the reason. So does a metric that stopped
being published: if its last value in the window is more than ``max_stale_days`` before the
window's end, serving would only ever see that value carried forward (LINK's Coin Metrics
series in ``../shared/data`` stop in February 2021). Gaps simply remove days from the pairs.
With fewer candidates than ``2 * per_horizon`` the highest and lowest lists overlap; a candidate
in both counts once for that horizon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bot.timeframes import DAY_MS, ms_to_iso
from strategies.features.pool import ID_SEPARATOR, qualified_id, split_id


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A candidate that got no coefficient at one horizon (``None``: at any horizon), and why."""

    metric_id: str
    horizon_days: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class HorizonPicks:
    """The candidates picked in one horizon: the highest and the lowest coefficients."""

    horizon_days: int
    highest: tuple[str, ...]
    lowest: tuple[str, ...]

    @property
    def picked(self) -> frozenset[str]:
        """Candidates picked in this horizon (one in both lists counts once)."""
        return frozenset(self.highest) | frozenset(self.lowest)


@dataclass(frozen=True)
class Selection:
    """The frozen outcome of :func:`select_metrics` for one coin.

    ``correlations[i][j]`` and ``observations[i][j]`` are the coefficient (NaN when excluded)
    and the number of labelled days of candidate ``pool[i]`` at horizon ``horizons_days[j]``.
    ``kept`` is in rank order; it is empty when the pool is empty or nothing qualified.
    """

    pool: tuple[str, ...]
    horizons_days: tuple[int, ...]
    per_horizon: int
    keep: int
    min_obs: int
    max_stale_days: int | None
    train_start_ms: int
    train_end_ms: int
    correlations: tuple[tuple[float, ...], ...]
    observations: tuple[tuple[int, ...], ...]
    picks: tuple[HorizonPicks, ...]
    pick_counts: tuple[int, ...]
    kept: tuple[str, ...]
    exclusions: tuple[Exclusion, ...] = field(default=())

    @property
    def empty_reason(self) -> str | None:
        """Why nothing was kept, or ``None`` when something was."""
        if self.kept:
            return None
        if not self.pool:
            return "the candidate pool is empty (no own metrics and no market-wide metrics)"
        return "no candidate had a usable correlation on the training window (see exclusions)"

    def correlation(self, metric_id: str, horizon_days: int) -> float:
        """Coefficient of one candidate at one horizon (NaN when it had none)."""
        return self.correlations[self.pool.index(metric_id)][self.horizons_days.index(horizon_days)]

    def mean_abs_correlation(self, metric_id: str) -> float:
        """Mean of ``|r|`` over the horizons where the candidate had a coefficient (tie-break)."""
        return _mean_abs(self.correlations[self.pool.index(metric_id)])

    def pick_count(self, metric_id: str) -> int:
        """In how many horizons the candidate was picked."""
        return self.pick_counts[self.pool.index(metric_id)]

    def correlation_table(self) -> pd.DataFrame:
        """Candidates x horizons frame of coefficients (NaN where excluded)."""
        return pd.DataFrame(
            np.array(self.correlations, dtype="float64").reshape(len(self.pool), -1),
            index=pd.Index(self.pool, name="metric"),
            columns=pd.Index(self.horizons_days, name="horizon_days"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN coefficients become ``None``); inverse of :meth:`from_dict`."""
        return {
            "pool": list(self.pool),
            "horizons_days": list(self.horizons_days),
            "per_horizon": self.per_horizon,
            "keep": self.keep,
            "min_obs": self.min_obs,
            "max_stale_days": self.max_stale_days,
            "train_start_ms": self.train_start_ms,
            "train_end_ms": self.train_end_ms,
            "correlations": [[_json_float(r) for r in row] for row in self.correlations],
            "observations": [list(row) for row in self.observations],
            "picks": [
                {
                    "horizon_days": p.horizon_days,
                    "highest": list(p.highest),
                    "lowest": list(p.lowest),
                }
                for p in self.picks
            ],
            "pick_counts": list(self.pick_counts),
            "kept": list(self.kept),
            "exclusions": [
                {"metric_id": e.metric_id, "horizon_days": e.horizon_days, "reason": e.reason}
                for e in self.exclusions
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        """Rebuild a :class:`Selection` from :meth:`to_dict` output."""
        return cls(
            pool=tuple(data["pool"]),
            horizons_days=tuple(int(h) for h in data["horizons_days"]),
            per_horizon=int(data["per_horizon"]),
            keep=int(data["keep"]),
            min_obs=int(data["min_obs"]),
            max_stale_days=None if data["max_stale_days"] is None else int(data["max_stale_days"]),
            train_start_ms=int(data["train_start_ms"]),
            train_end_ms=int(data["train_end_ms"]),
            correlations=tuple(
                tuple(math.nan if r is None else float(r) for r in row)
                for row in data["correlations"]
            ),
            observations=tuple(tuple(int(n) for n in row) for row in data["observations"]),
            picks=tuple(
                HorizonPicks(int(p["horizon_days"]), tuple(p["highest"]), tuple(p["lowest"]))
                for p in data["picks"]
            ),
            pick_counts=tuple(int(c) for c in data["pick_counts"]),
            kept=tuple(data["kept"]),
            exclusions=tuple(
                Exclusion(
                    e["metric_id"],
                    None if e["horizon_days"] is None else int(e["horizon_days"]),
                    e["reason"],
                )
                for e in data["exclusions"]
            ),
        )


def daily_closes(bars: pd.DataFrame, timeframe_ms: int) -> pd.Series:
    """The coin's close at the end of each UTC day, indexed by the day's 00:00 (epoch ms).

    A bar belongs to the day in which it *closes* (``open_time + timeframe_ms``, a close at
    exactly 00:00 ends the previous day); the day's close is that of its last bar. Days with no
    bar are absent.
    """
    if bars.empty:
        return pd.Series([], index=pd.Index([], dtype="int64", name="day"), dtype="float64")
    close_ts = bars["open_time"].to_numpy(dtype="int64") + int(timeframe_ms)
    day = (close_ts - 1) // DAY_MS * DAY_MS
    frame = pd.DataFrame({"day": day, "close_ts": close_ts, "close": bars["close"].to_numpy()})
    last = frame.sort_values("close_ts", kind="stable").groupby("day", sort=True).last()
    return last["close"].astype("float64").rename("close")


def daily_metric_values(metrics_long: pd.DataFrame, metric_ids: Sequence[str]) -> pd.DataFrame:
    """Days x metric ids frame of daily values (index: the day's 00:00, epoch ms).

    A value belongs to the day containing its ``observed_at``. When one day has several rows
    (revisions), the one known last wins (``known_at`` when the frame has it, else row order).
    Ids absent from ``metrics_long`` give an all-NaN column.
    """
    wanted = {split_id(i) for i in metric_ids}
    columns: dict[str, pd.Series] = {}
    if not metrics_long.empty and wanted:
        maybe = metrics_long["asset"].isin({a for a, _ in wanted}) & metrics_long["name"].isin(
            {n for _, n in wanted}
        )
        rows = metrics_long.loc[maybe.to_numpy()]
        ids = rows["asset"].astype(str) + ID_SEPARATOR + rows["name"].astype(str)
        rows = rows.loc[ids.isin(set(metric_ids)).to_numpy()].copy()
        rows["day"] = rows["observed_at"].to_numpy(dtype="int64") // DAY_MS * DAY_MS
        if "known_at" in rows.columns:
            rows = rows.sort_values("known_at", kind="stable")
        for (asset, name), group in rows.groupby(["asset", "name"], sort=False):
            series = group.groupby("day", sort=True)["value"].last()
            columns[qualified_id(str(asset), str(name))] = series.astype("float64")
    table = pd.DataFrame(columns)
    table = table.reindex(columns=list(metric_ids))
    table.index = table.index.astype("int64")
    table.index.name = "day"
    return table.sort_index()


def forward_log_returns(
    daily_close: pd.Series, horizon_days: int, train_start_ms: int, train_end_ms: int
) -> pd.Series:
    """Label of each training day ``D``: ``log(close[D + h] / close[D])``.

    Indexed by every day ``D`` with ``train_start_ms <= D`` whose label ends (the close at the end
    of ``D + h``, time ``D + (h + 1) days``) no later than ``train_end_ms``; NaN where a close is
    missing or not positive.
    """
    first = -(-int(train_start_ms) // DAY_MS) * DAY_MS
    last = (int(train_end_ms) - (horizon_days + 1) * DAY_MS) // DAY_MS * DAY_MS
    days = np.arange(first, last + 1, DAY_MS, dtype="int64") if last >= first else np.array([])
    index = pd.Index(days.astype("int64"), name="day")
    close = daily_close.astype("float64").where(daily_close > 0)
    start = close.reindex(index).to_numpy()
    end = close.reindex(index + horizon_days * DAY_MS).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.Series(np.log(end / start), index=index, name=f"ret_{horizon_days}d")


def select_metrics(
    daily_close: pd.Series,
    metrics_long: pd.DataFrame,
    pool: Sequence[str],
    *,
    train_start_ms: int,
    train_end_ms: int,
    horizons_days: Sequence[int] = (12, 24, 48),
    per_horizon: int = 5,
    keep: int = 10,
    min_obs: int = 60,
    max_stale_days: int | None = 14,
) -> Selection:
    """Select up to ``keep`` metrics of ``pool`` by their correlation with forward returns.

    ``daily_close`` is the coin's end-of-day close indexed by day 00:00 ms (see
    :func:`daily_closes`); ``metrics_long`` has ``asset, name, observed_at, value`` (and
    optionally ``known_at``). Only the training window is read. A candidate whose last value in
    the window is more than ``max_stale_days`` before its end is excluded (``None``: never): the
    feature function would carry that dead value forward for the whole serving period. See the
    module docstring for the method and :class:`Selection` for the result.
    """
    if per_horizon <= 0 or keep <= 0 or min_obs < 3 or not horizons_days:
        raise ValueError("per_horizon and keep must be > 0, min_obs >= 3, horizons non-empty")
    pool = list(dict.fromkeys(pool))
    horizons = tuple(int(h) for h in horizons_days)
    values = daily_metric_values(metrics_long, pool)
    values = values.loc[(values.index >= train_start_ms) & (values.index < train_end_ms)]
    corr = np.full((len(pool), len(horizons)), np.nan)
    nobs = np.zeros((len(pool), len(horizons)), dtype="int64")
    exclusions: list[Exclusion] = []
    stale = _stale(values, pool, train_end_ms, max_stale_days)
    exclusions.extend(Exclusion(metric_id, None, reason) for metric_id, reason in stale.items())
    for j, h in enumerate(horizons):
        label = forward_log_returns(daily_close, h, train_start_ms, train_end_ms)
        y_all = label.to_numpy()
        x_table = values.reindex(label.index).to_numpy(dtype="float64")
        for i, metric_id in enumerate(pool):
            x = x_table[:, i]
            both = np.isfinite(x) & np.isfinite(y_all)
            nobs[i, j] = int(both.sum())
            if metric_id in stale:
                continue
            r, reason = _pearson(x[both], y_all[both], min_obs)
            if reason is not None:
                exclusions.append(Exclusion(metric_id, h, reason))
            corr[i, j] = r
    picks = tuple(_pick(pool, corr[:, j], h, per_horizon) for j, h in enumerate(horizons))
    counts = [sum(metric_id in p.picked for p in picks) for metric_id in pool]
    ranked = sorted(
        (i for i in range(len(pool)) if counts[i] > 0),
        key=lambda i: (-counts[i], -_mean_abs(corr[i]), pool[i]),
    )
    return Selection(
        pool=tuple(pool),
        horizons_days=horizons,
        per_horizon=per_horizon,
        keep=keep,
        min_obs=min_obs,
        max_stale_days=max_stale_days,
        train_start_ms=int(train_start_ms),
        train_end_ms=int(train_end_ms),
        correlations=tuple(tuple(float(r) for r in row) for row in corr),
        observations=tuple(tuple(int(n) for n in row) for row in nobs),
        picks=picks,
        pick_counts=tuple(counts),
        kept=tuple(pool[i] for i in ranked[:keep]),
        exclusions=tuple(exclusions),
    )


def _stale(
    values: pd.DataFrame, pool: Sequence[str], train_end_ms: int, max_stale_days: int | None
) -> dict[str, str]:
    """Candidates with values in the window whose last one is too old at its end, and why."""
    if max_stale_days is None:
        return {}
    stale = {}
    for metric_id in pool:
        observed = values.index[values[metric_id].notna().to_numpy()]
        if len(observed) == 0:
            continue  # no values at all: reported per horizon as too few labelled days
        last_day = int(observed.max())
        if train_end_ms - (last_day + DAY_MS) > max_stale_days * DAY_MS:
            stale[metric_id] = (
                f"stale: last value on {ms_to_iso(last_day)[:10]}, more than {max_stale_days} "
                "days before the end of the training window"
            )
    return stale


def _pearson(x: np.ndarray, y: np.ndarray, min_obs: int) -> tuple[float, str | None]:
    """Pearson ``r`` of paired samples, or NaN and the reason it is undefined."""
    if len(x) < min_obs:
        return math.nan, f"only {len(x)} labelled days (< min_obs {min_obs})"
    if np.ptp(x) == 0:
        return math.nan, "constant on the labelled training days"
    if np.ptp(y) == 0:
        return math.nan, "the coin's forward return is constant on these days"
    dx = x - x.mean()
    dy = y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if not denom > 0 or not math.isfinite(denom):
        return math.nan, "zero or non-finite variance"
    return max(-1.0, min(1.0, float(dx @ dy) / denom)), None


def _pick(pool: Sequence[str], corr: np.ndarray, horizon: int, n: int) -> HorizonPicks:
    """The ``n`` highest and ``n`` lowest coefficients of one horizon (ties by id)."""
    valid = [i for i in range(len(pool)) if math.isfinite(corr[i])]
    highest = sorted(valid, key=lambda i: (-corr[i], pool[i]))[:n]
    lowest = sorted(valid, key=lambda i: (corr[i], pool[i]))[:n]
    return HorizonPicks(horizon, tuple(pool[i] for i in highest), tuple(pool[i] for i in lowest))


def _mean_abs(row: Sequence[float] | np.ndarray) -> float:
    finite = [abs(r) for r in row if math.isfinite(r)]
    return sum(finite) / len(finite) if finite else 0.0


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None
