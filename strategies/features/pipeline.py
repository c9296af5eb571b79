"""The one feature function of the DRU: fitted once, then run in batch or bar by bar.

A :class:`FeatureSpec` is what the fit produces and the Crypto Module's artifact stores: the
frozen :class:`~strategies.features.selection.Selection`, the fitted
:class:`~strategies.features.refine.RefinerParams` and the known-time rule. From it:

* :func:`compute_features` builds the features of a whole bar history at once (training env,
  reports), and
* :class:`FeatureState` builds them one event at a time (``on_metric`` / ``on_bar``) for the
  backtest and live handlers.

Both drive the same :class:`~strategies.features.refine.Refiner` with the same inputs in the same
order, so their arrays are bit-identical (DESIGN property 4). Batch precomputes the as-of join of
metrics to bar closes with vectorised numpy; the per-step arithmetic is the kernel's.

Known-time alignment (DESIGN property 3). A metric value becomes visible at its *effective known
time* ``max(known_at, observed_at + known_delay_ms)``, where ``known_delay_ms`` is one day plus
the publication lag: a daily value is never used before its day has ended, even if a store row
claims otherwise. At a bar closing at ``ts`` the visible values are those with effective known
time ``<= ts``. The *latest* value of a metric is the visible one with the greatest
``observed_at``; a later row for the same ``observed_at`` (a revision) replaces it, and a late row
for an older day (a backfill) changes nothing. A bar is a refiner step when some metric's latest
value changed since the previous bar. The incremental path holds early-delivered metrics until
their effective known time, so event order cannot leak the future either.

The features are the refined metrics only; price features of the networks are built elsewhere.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bot.events import Bar, Metric
from bot.timeframes import DAY_MS, HOUR_MS
from config.schema import FeatureConfig
from strategies.features.pool import ID_SEPARATOR, split_id
from strategies.features.refine import Refiner, RefinerParams, fit_refiner
from strategies.features.selection import Selection, daily_metric_values, select_metrics

SPEC_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec:
    """A fitted feature function for one coin; JSON-serialisable (:meth:`to_json`)."""

    coin: str
    selection: Selection
    refiner: RefinerParams
    known_delay_ms: int

    @property
    def metric_ids(self) -> tuple[str, ...]:
        """The selected metrics, in rank order (the refiner's input columns)."""
        return self.refiner.metric_ids

    @property
    def width(self) -> int:
        """Number of features per bar (``k``; 0 when nothing was selected)."""
        return self.refiner.n_components

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column names ``pc1 .. pck``."""
        return tuple(f"pc{i + 1}" for i in range(self.width))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {
            "version": SPEC_VERSION,
            "coin": self.coin,
            "known_delay_ms": self.known_delay_ms,
            "selection": self.selection.to_dict(),
            "refiner": self.refiner.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild from :meth:`to_dict`; refuses another format version."""
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"feature spec version {data.get('version')!r} != {SPEC_VERSION}")
        return cls(
            coin=str(data["coin"]),
            selection=Selection.from_dict(data["selection"]),
            refiner=RefinerParams.from_dict(data["refiner"]),
            known_delay_ms=int(data["known_delay_ms"]),
        )

    def to_json(self) -> str:
        """The spec as JSON text (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class FeatureFrame:
    """Features of a bar history: row ``i`` is what was known at ``close_time[i]``."""

    close_time: np.ndarray
    features: np.ndarray
    ready: np.ndarray
    explained_variance: np.ndarray
    names: tuple[str, ...]

    def to_frame(self) -> pd.DataFrame:
        """A frame indexed by bar close time with the features, ``ready`` and the variance."""
        frame = pd.DataFrame(self.features, columns=list(self.names), index=self.close_time)
        frame.index.name = "close_time"
        frame["ready"] = self.ready
        frame["explained_variance"] = self.explained_variance
        return frame


def with_known_at(metrics_long: pd.DataFrame, publication_lag_ms: int) -> pd.DataFrame:
    """``metrics_long`` with a ``known_at`` column (the end of the day plus the lag if absent)."""
    if "known_at" in metrics_long.columns:
        return metrics_long
    frame = metrics_long.copy()
    observed = frame["observed_at"].to_numpy(dtype="int64")
    frame["known_at"] = observed + DAY_MS + int(publication_lag_ms)
    return frame


def fit_feature_spec(
    coin: str,
    daily_close: pd.Series,
    metrics_long: pd.DataFrame,
    pool: Sequence[str],
    cfg: FeatureConfig,
    train_start_ms: int,
    train_end_ms: int,
    *,
    publication_lag_ms: int = HOUR_MS,
    min_obs: int = 60,
    max_stale_days: int | None = 14,
    min_periods: int = 30,
) -> FeatureSpec:
    """Select the metrics and fit the refiner on ``[train_start_ms, train_end_ms]`` only.

    ``daily_close``: the coin's end-of-day closes (see
    :func:`~strategies.features.selection.daily_closes`). ``metrics_long``: ``asset, name,
    observed_at, value`` and ``known_at`` (derived from ``publication_lag_ms`` when absent).
    ``min_obs`` and ``max_stale_days`` go to
    :func:`~strategies.features.selection.select_metrics`. The refiner is fitted on the values
    observed in the window and known by its end, stepped exactly as serving steps them; its
    first ``min_periods`` days give features 0 and ``ready`` False.
    """
    known_delay_ms = DAY_MS + int(publication_lag_ms)
    metrics = with_known_at(metrics_long, publication_lag_ms)
    selection = select_metrics(
        daily_close,
        metrics,
        pool,
        train_start_ms=train_start_ms,
        train_end_ms=train_end_ms,
        horizons_days=cfg.horizons_days,
        per_horizon=cfg.per_horizon,
        keep=cfg.keep,
        min_obs=min_obs,
        max_stale_days=max_stale_days,
    )
    ids = selection.kept
    # Step the refiner at every moment a training value became known, as serving would.
    rows = [
        _clip_rows(r, train_start_ms, train_end_ms)
        for r in _metric_rows(metrics, ids, known_delay_ms)
    ]
    clock = np.unique(np.concatenate([known for known, _, _ in rows] + [np.zeros(0, "int64")]))
    values, changed = _as_of_join(rows, clock)
    daily = daily_metric_values(metrics, ids)
    daily = daily.loc[(daily.index >= train_start_ms) & (daily.index < train_end_ms)]
    refiner = fit_refiner(
        ids,
        clock[changed],
        values[changed],
        daily.to_numpy(dtype="float64"),
        norm_window_days=cfg.norm_window_days,
        pca_window_days=cfg.pca_window_days,
        pca_variance=cfg.pca_variance,
        min_periods=min_periods,
    )
    return FeatureSpec(coin, selection, refiner, known_delay_ms)


def compute_features(
    spec: FeatureSpec, bars: pd.DataFrame, metrics_long: pd.DataFrame, timeframe_ms: int
) -> FeatureFrame:
    """Features at every bar close of ``bars`` (batch path; same results as :class:`FeatureState`).

    ``bars`` needs ``open_time`` (strictly increasing); a bar closes at ``open_time +
    timeframe_ms``. ``metrics_long`` needs ``asset, name, observed_at, value`` and ``known_at``
    (without it, values are known ``spec.known_delay_ms`` after ``observed_at``).
    """
    close_ts = bars["open_time"].to_numpy(dtype="int64") + int(timeframe_ms)
    if len(close_ts) > 1 and not (np.diff(close_ts) > 0).all():
        raise ValueError("bars must be sorted by open_time without duplicates")
    n = len(close_ts)
    if not spec.metric_ids:
        return FeatureFrame(
            close_ts, np.zeros((n, 0)), np.ones(n, dtype=bool), np.full(n, math.nan), ()
        )
    rows = _metric_rows(metrics_long, spec.metric_ids, spec.known_delay_ms)
    values, changed = _as_of_join(rows, close_ts)
    return _refine_at_bars(Refiner(spec.refiner), spec, close_ts, values, changed)


def _refine_at_bars(
    refiner: Refiner,
    spec: FeatureSpec,
    close_ts: np.ndarray,
    values: np.ndarray,
    changed: np.ndarray,
) -> FeatureFrame:
    """Step ``refiner`` at every bar where a latest value changed; features at every bar."""
    steps = np.flatnonzero(changed)
    stepped = refiner.steps(close_ts[steps], values[steps])
    # Output row 0 is the state before any step; row s + 1 the state after step s.
    step_features = np.concatenate((np.zeros((1, spec.width)), stepped.features))
    step_ready = np.r_[False, stepped.ready]
    step_variance = np.r_[math.nan, stepped.explained_variance]
    state = np.cumsum(changed)
    return FeatureFrame(
        close_ts,
        step_features[state],
        step_ready[state],
        step_variance[state],
        spec.feature_names,
    )


def latest_values(
    metrics_long: pd.DataFrame, metric_ids: Sequence[str], known_delay_ms: int, close_ts: np.ndarray
) -> np.ndarray:
    """``(len(close_ts), len(metric_ids))``: each metric's latest raw value known at each close
    (NaN before its first), as the refiner receives them; the DRU's inputs before any
    normalisation or projection."""
    rows = _metric_rows(metrics_long, metric_ids, known_delay_ms)
    return _as_of_join(rows, np.asarray(close_ts, dtype=np.int64))[0]


def normalised_at_bars(
    spec: FeatureSpec, metrics_long: pd.DataFrame, close_ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The refiner's rolling z-scores of the selected metrics at each close (its stage before
    the PCA; carried forward between steps like the features) and whether it is past its
    warm-up there."""
    close_ts = np.asarray(close_ts, dtype=np.int64)
    if len(close_ts) > 1 and not (np.diff(close_ts) > 0).all():
        raise ValueError("close times must be strictly increasing")
    m = len(spec.metric_ids)
    if not m:
        return np.zeros((len(close_ts), 0)), np.ones(len(close_ts), dtype=bool)
    values, changed = _as_of_join(
        _metric_rows(metrics_long, spec.metric_ids, spec.known_delay_ms), close_ts
    )
    steps = np.flatnonzero(changed)
    stepped = Refiner(spec.refiner).steps(close_ts[steps], values[steps])
    state = np.cumsum(changed)
    z = np.concatenate((np.zeros((1, m)), stepped.z))[state]
    return z, np.r_[False, stepped.ready][state]


def metrics_in_time(
    spec: FeatureSpec, close_ts: np.ndarray, metrics: pd.DataFrame, bars_before: np.ndarray
) -> bool:
    """Whether every metric of ``spec`` in ``metrics`` was given before the first bar closing at
    or after its effective known time (what :meth:`FeatureState.read_history` assumes).

    ``bars_before[i]``: how many of the bars closing at ``close_ts`` were read before metric row
    ``i``. Publish order (a metric before the bars closing at or after its ``known_at``, as both
    drivers and the warm-up's history deliver them) always passes; a metric given after a bar
    that already closed past its known time does not (one by one, it would wait for the next
    bar)."""
    if not spec.metric_ids or len(metrics) == 0:
        return True
    column, known, _, _ = _matched_metrics(metrics, spec.metric_ids, spec.known_delay_ms)
    before = np.asarray(bars_before, dtype=np.int64)[column >= 0]
    if not (before > 0).any():
        return True
    last_read = np.asarray(close_ts, dtype=np.int64)[np.maximum(before, 1) - 1]
    return bool(((before == 0) | (known[column >= 0] > last_read)).all())


class FeatureState:
    """Bar-by-bar features of one coin, for event handlers (same results as the batch path).

    Feed every ``Metric`` event with ``on_metric`` and every closed ``Bar`` of the coin with
    ``on_bar``, which returns the features known at the bar's close.
    """

    def __init__(self, spec: FeatureSpec, timeframe_ms: int) -> None:
        self.spec = spec
        self.timeframe_ms = int(timeframe_ms)
        self._column = {split_id(i): j for j, i in enumerate(spec.metric_ids)}
        m = len(spec.metric_ids)
        self._latest = np.full(m, math.nan)
        self._latest_observed = [-math.inf] * m
        self._pending: list[tuple[int, int, int, int, float]] = []
        self._sequence = 0
        self._last_close: int | None = None
        self._refiner = Refiner(spec.refiner)

    @property
    def ready(self) -> bool:
        """Whether the refiner has enough history (always True with no selected metrics)."""
        return self._refiner.ready or not self.spec.metric_ids

    @property
    def features(self) -> np.ndarray:
        """The current features (a copy)."""
        return self._refiner.features.copy()

    @property
    def explained_variance(self) -> float:
        """Share of variance the ``k`` components explain in the current PCA window."""
        return self._refiner.explained_variance

    def on_metric(self, metric: Metric) -> None:
        """Take a metric event; it becomes visible at bars closing at or after its known time."""
        column = self._column.get((metric.asset, metric.name))
        if column is None:
            return
        known = max(int(metric.ts), int(metric.observed_at) + self.spec.known_delay_ms)
        entry = (known, self._sequence, column, int(metric.observed_at), float(metric.value))
        heapq.heappush(self._pending, entry)
        self._sequence += 1

    def on_bar(self, bar: Bar) -> np.ndarray:
        """Features known at the close of ``bar`` (``bar.ts``)."""
        close = int(bar.ts)
        if close != bar.open_time + self.timeframe_ms:
            raise ValueError(f"bar ts {close} is not open_time + timeframe ({self.timeframe_ms})")
        if self._last_close is not None and close <= self._last_close:
            raise ValueError(
                f"bar closing at {close} is not after the previous ({self._last_close})"
            )
        self._last_close = close
        changed = False
        while self._pending and self._pending[0][0] <= close:
            _, _, column, observed, value = heapq.heappop(self._pending)
            if observed >= self._latest_observed[column]:
                self._latest_observed[column] = observed
                self._latest[column] = value
                changed = True
        if changed:
            self._refiner.step(close, self._latest)
        return self._refiner.features.copy()

    @property
    def fresh(self) -> bool:
        """Whether no bar and no metric of the spec has been read yet."""
        return self._last_close is None and self._sequence == 0

    def read_history(self, close_ts: np.ndarray, metrics: pd.DataFrame) -> FeatureFrame:
        """Read a whole history at once: the features at every bar, and the state left exactly
        as :meth:`on_metric` and :meth:`on_bar`, called one event at a time, leave it.

        ``close_ts``: the bars' close times (strictly increasing). ``metrics``: ``asset, name,
        observed_at, value`` and ``known_at`` (the ``Metric``'s ``ts``), one row per metric
        event in the order ``on_metric`` would get them, each before the first bar closing at
        or after its effective known time (see :func:`metrics_in_time`); rows after the last
        bar stay pending. Only for a fresh state (:attr:`fresh`); the arithmetic is the batch
        path's (:func:`compute_features`), so the features are bit-identical too.
        """
        if not self.fresh:
            raise ValueError("read_history needs a fresh FeatureState (it has read events)")
        close_ts = np.asarray(close_ts, dtype="int64")
        if len(close_ts) > 1 and not (np.diff(close_ts) > 0).all():
            raise ValueError("bar close times must be strictly increasing")
        n = len(close_ts)
        last = int(close_ts[-1]) if n else None
        if not self.spec.metric_ids:
            self._last_close = last
            return FeatureFrame(
                close_ts, np.zeros((n, 0)), np.ones(n, dtype=bool), np.full(n, math.nan), ()
            )
        rows = _metric_rows(metrics, self.spec.metric_ids, self.spec.known_delay_ms, True)
        values, changed = _as_of_join([r[:3] for r in rows], close_ts)
        frame = _refine_at_bars(self._refiner, self.spec, close_ts, values, changed)
        pending = []
        for column, (known, observed, value, sequence) in enumerate(rows):
            applied = 0 if last is None else int(np.searchsorted(known, last, side="right"))
            if applied:
                # As one by one: the row applied last among those with the greatest observed_at.
                current = int(np.lexsort((np.arange(applied), observed[:applied]))[-1])
                self._latest[column] = value[current]
                self._latest_observed[column] = int(observed[current])
            pending += [
                (int(known[i]), int(sequence[i]), column, int(observed[i]), float(value[i]))
                for i in range(applied, len(known))
            ]
        heapq.heapify(pending)
        self._pending = pending
        self._sequence = sum(len(r[0]) for r in rows)
        self._last_close = last
        return frame


_Rows = tuple[np.ndarray, np.ndarray, np.ndarray]


def _matched_metrics(
    metrics_long: pd.DataFrame, metric_ids: Sequence[str], known_delay_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``metrics_long``: its column in ``metric_ids`` (-1 when not selected), its
    effective known time, ``observed_at`` and value."""
    frame = with_known_at(metrics_long, known_delay_ms - DAY_MS)
    column = _metric_columns(frame["asset"], frame["name"], metric_ids)
    observed = frame["observed_at"].to_numpy(dtype="int64")
    known = np.maximum(frame["known_at"].to_numpy(dtype="int64"), observed + known_delay_ms)
    return column, known, observed, frame["value"].to_numpy(dtype="float64")


def _metric_columns(assets: pd.Series, names: pd.Series, metric_ids: Sequence[str]) -> np.ndarray:
    """Per row, the column of its ``asset:name`` id in ``metric_ids`` (-1 when absent, or when
    the asset or name is missing); the id is built once per distinct (asset, name) pair, not
    once per row."""
    asset_code, asset_values = pd.factorize(assets)
    name_code, name_values = pd.factorize(names)
    column = np.full(len(asset_code), -1, dtype=np.int64)
    named = np.flatnonzero((asset_code >= 0) & (name_code >= 0))
    if len(named) == 0:
        return column
    width = max(1, len(name_values))
    pairs, row_pair = np.unique(
        asset_code[named].astype(np.int64) * width + name_code[named], return_inverse=True
    )
    ids = [
        f"{asset_values[p // width]}{ID_SEPARATOR}{name_values[p % width]}" for p in pairs.tolist()
    ]
    column[named] = pd.Index(list(metric_ids)).get_indexer(ids)[row_pair]
    return column


def _metric_rows(
    metrics_long: pd.DataFrame,
    metric_ids: Sequence[str],
    known_delay_ms: int,
    with_sequence: bool = False,
) -> list[Any]:
    """Per metric id: (effective known time, observed_at, value), stably sorted by known time;
    ``with_sequence`` adds each row's rank among the selected rows in frame order (the order
    :meth:`FeatureState.on_metric` numbers them)."""
    pairs = [split_id(i) for i in metric_ids]
    assets, names = {a for a, _ in pairs}, {n for _, n in pairs}
    mine = metrics_long["asset"].isin(assets) & metrics_long["name"].isin(names)
    column, known_all, observed_all, value_all = _matched_metrics(
        metrics_long.loc[mine.to_numpy()], metric_ids, known_delay_ms
    )
    sequence_all = np.cumsum(column >= 0) - 1
    rows = []
    for j in range(len(metric_ids)):
        mine = np.flatnonzero(column == j)
        order = mine[np.argsort(known_all[mine], kind="stable")]
        row = (known_all[order], observed_all[order], value_all[order])
        rows.append((*row, sequence_all[order]) if with_sequence else row)
    return rows


def _clip_rows(rows: _Rows, start_ms: int, end_ms: int) -> _Rows:
    """Rows observed at or after ``start_ms`` and known by ``end_ms`` (a training window)."""
    known, observed, value = rows
    keep = (observed >= start_ms) & (known <= end_ms)
    return known[keep], observed[keep], value[keep]


def _as_of_join(rows: list[_Rows], clock: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latest visible value of each metric at each clock time, and where any of them changed.

    Applying a metric's rows in known-time order, a row becomes the latest when its
    ``observed_at`` is >= that of the current one; ranking rows by ``(observed_at, position)``
    and taking the running maximum of the rank gives, after each row, the current one.
    """
    values = np.full((len(clock), len(rows)), math.nan)
    changed = np.zeros(len(clock), dtype=bool)
    for j, (known, observed, value) in enumerate(rows):
        if len(known) == 0:
            continue
        by_rank = np.lexsort((np.arange(len(known)), observed))
        rank = np.empty(len(known), dtype="int64")
        rank[by_rank] = np.arange(len(known))
        current_after = by_rank[np.maximum.accumulate(rank)]
        applied = np.searchsorted(known, clock, side="right") - 1
        current = np.where(applied >= 0, current_after[np.maximum(applied, 0)], -1)
        visible = current >= 0
        values[visible, j] = value[current[visible]]
        changed |= current != np.concatenate(([-1], current[:-1]))
    return values, changed
