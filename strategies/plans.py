"""Following a plan: what a module whose outputs were computed ahead (``prepare``, in a few
batched passes over a known history) shares whatever it computes.

A module that follows a plan reads its decisions from it bar by bar. The plan holds the bars it
foresaw; a bar it did not foresee makes the module leave the plan: it rebuilds, from the bars and
metrics it was given (:func:`events_read`), the state reading them one by one would have left,
at once where the metrics arrived in time (:meth:`PlanFollower._features_at_once`), and goes on
bar by bar. The Crypto Module (:class:`strategies.crypto_module.CryptoModule`) and the MARS
ensemble (:class:`strategies.mars.module.MarsModule`) both follow plans. Before a replay,
:func:`prepare_modules` has every module that can compute its plan from the replay's history
(:class:`ReplayHistory`), side by side on a thread per CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from bot.cpus import usable_cpus
from bot.events import Bar, Event, Metric
from bot.timeframes import timeframe_ms
from strategies.features.pipeline import metrics_in_time

if TYPE_CHECKING:
    from strategies.features import FeatureState


class ReadPlan(Protocol):
    """What a module following a plan has read: the planned bars up to ``cursor`` and the
    metrics given meanwhile, as they were given: ``received`` holds ``(bars read before,
    metrics)``, one entry per hand-off (one metric, or an instant's metrics, unfiltered)."""

    closes: list[int]
    bars: list[tuple[int, float, float, float, float, float]]
    cursor: int
    received: list[tuple[int, Sequence[Metric]]]


def events_read(
    plan: ReadPlan,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    keys: frozenset[tuple[str, str]] | None,
) -> list[Event]:
    """The events a module following ``plan`` has been given, in the order it got them (its
    bars, as ``Bar`` events of ``symbol``, and the metrics of ``keys`` between them, all when
    ``keys`` is None): what it replays bar by bar to leave the plan."""
    given = [
        (at, metric)
        for at, metrics in plan.received
        for metric in metrics
        if keys is None or (metric.asset, metric.name) in keys
    ]
    pending = iter(given)
    metric = next(pending, None)
    events: list[Event] = []
    for i, (open_time, o, h, lo, c, v) in enumerate(plan.bars[: plan.cursor]):
        while metric is not None and metric[0] <= i:
            events.append(metric[1])
            metric = next(pending, None)
        events.append(Bar(plan.closes[i], exchange, symbol, timeframe, open_time, o, h, lo, c, v))
    if metric is not None:
        events += [metric[1], *(m for _, m in pending)]
    return events


class PlanFollower:
    """What a module that can follow a plan (its outputs computed ahead by ``prepare``) does
    the same way whatever it computes: say whether it has read anything, and keep the metrics
    it reads while it follows the plan (to replay them if it leaves it)."""

    symbol: str
    timeframe: str
    metric_keys: frozenset[tuple[str, str]]
    _step: int
    _bars: int
    _plan: ReadPlan | None
    _features: FeatureState | None

    @property
    def fresh(self) -> bool:
        """Whether the module has read nothing yet (no bar, no metric it uses, no plan)."""
        return (
            self._bars == 0
            and self._plan is None
            and (self._features is None or self._features.fresh)
        )

    def on_metric(self, metric: Metric) -> None:
        """Take a metric event (the feature state keeps those it uses until they are known;
        a plan notes them)."""
        plan = self._plan
        if plan is not None:
            if (metric.asset, metric.name) in self.metric_keys:
                plan.received.append((plan.cursor, (metric,)))
        elif self._features is not None:
            self._features.on_metric(metric)

    def on_metrics(self, metrics: Sequence[Metric]) -> None:
        """Take an instant's metric events, in order: :meth:`on_metric` of each. A plan keeps
        them as given, in one entry (those the module does not read are left out only if it
        leaves the plan): a replay hands every instant's metrics to every module."""
        plan = self._plan
        if plan is not None:
            plan.received.append((plan.cursor, tuple(metrics)))  # a copy: the caller's may change
        else:
            for metric in metrics:
                self.on_metric(metric)

    def _events_read(self, plan: ReadPlan, exchange: str) -> list[Event]:
        """The events this module was given while following ``plan``, its own metrics only
        (:func:`events_read`): what it replays to leave the plan."""
        return events_read(
            plan,
            exchange=exchange,
            symbol=self.symbol,
            timeframe=self.timeframe,
            keys=self.metric_keys,
        )

    def _features_at_once(
        self, events: Sequence[Event]
    ) -> tuple[EventHistory, np.ndarray, np.ndarray] | None:
        """The module's bars in ``events``, and the DRU's features ``(T, k)`` and readiness
        ``(T,)`` at each, read at once by its fresh feature state (left as reading them one by
        one would leave it); None when that cannot be: bars out of order, or a metric given
        after a bar that already closed past its known time."""
        history = event_history(
            events,
            symbol=self.symbol,
            timeframe=self.timeframe,
            step_ms=self._step,
            metric_keys=self.metric_keys,
        )
        if history is None:
            return None
        close = history.close
        if self._features is None:
            return history, np.zeros((len(close), 0)), np.ones(len(close), dtype=bool)
        if not metrics_in_time(self._features.spec, close, history.metrics, history.bars_before):
            return None
        read = self._features.read_history(close, history.metrics)
        return history, read.features, read.ready


METRIC_COLUMNS = ["known_at", "asset", "name", "observed_at", "value"]
"""The columns of the metric tables a module reads at once."""


@dataclass(frozen=True)
class EventHistory:
    """A module's bars and metrics taken from a list of events, for reading them at once:
    ``close (T,)``, ``ohlcv (T, 5)``, ``metrics`` (:data:`METRIC_COLUMNS`) and, per metric row,
    how many of the bars came before it (``bars_before``)."""

    close: np.ndarray
    ohlcv: np.ndarray
    metrics: pd.DataFrame
    bars_before: np.ndarray


def event_history(
    events: Sequence[Event],
    *,
    symbol: str,
    timeframe: str,
    step_ms: int,
    metric_keys: frozenset[tuple[str, str]],
) -> EventHistory | None:
    """The bars of ``symbol`` at ``timeframe`` and the metrics of ``metric_keys`` in
    ``events``; None when the bars are not one per close in close order (bar by bar raises
    where that goes wrong)."""
    bars: list[tuple[int, float, float, float, float, float]] = []
    closes: list[int] = []
    metrics: list[tuple[int, str, str, int, float]] = []
    before: list[int] = []
    for event in events:
        if isinstance(event, Metric):
            if (event.asset, event.name) in metric_keys:  # the feature state ignores others
                metrics.append((event.ts, event.asset, event.name, event.observed_at, event.value))
                before.append(len(bars))
        elif isinstance(event, Bar) and event.symbol == symbol and event.timeframe == timeframe:
            bars.append(
                (event.open_time, event.open, event.high, event.low, event.close, event.volume)
            )
            closes.append(event.ts)
    table = np.array(bars, dtype=np.float64).reshape(-1, 6)
    open_time = np.array([b[0] for b in bars], dtype=np.int64)
    close = np.array(closes, dtype=np.int64)
    if (close != open_time + step_ms).any() or (np.diff(close) <= 0).any():
        return None
    frame = pd.DataFrame(metrics, columns=METRIC_COLUMNS)
    return EventHistory(close, table[:, 1:], frame, np.array(before, dtype=np.int64))


class ReplayHistory(Protocol):
    """What :meth:`PortfolioVote.prepare` reads of a replay
    (:class:`backtest.replay.ReplayDriver`)."""

    timeframe: str

    def replayed_bars(self, symbol: str) -> tuple[np.ndarray, np.ndarray]: ...

    def replayed_metrics(self) -> pd.DataFrame: ...


def prepare_modules(
    modules: Iterable[Any],
    replay: ReplayHistory,
    *,
    after: int | None = None,
    before: int | None = None,
) -> int:
    """Have each of ``modules`` that can (it has ``prepare`` and a ``symbol``, and has read
    nothing) compute its outputs at every bar of its symbol the replay yields, from the metrics
    it reads (``metric_keys``, all when it has none); only events stamped in ``(after,
    before)``. Returns how many did. When none can, nothing of the replay is read."""
    modules = tuple(modules)
    if not any(hasattr(module, "prepare") and getattr(module, "fresh", True) for module in modules):
        return 0
    metrics = replay.replayed_metrics()
    inside = _inside(metrics["known_at"].to_numpy(), after, before)
    if not inside.all():
        metrics = metrics[inside]
    # Each module gets the rows of the metrics it reads (one factorisation for all).
    assets, asset_names = pd.factorize(metrics["asset"])
    names, metric_names = pd.factorize(metrics["name"])
    pairs = assets.astype(np.int64) * max(1, len(metric_names)) + names
    asset_code = {str(a): i for i, a in enumerate(asset_names)}
    name_code = {str(n): i for i, n in enumerate(metric_names)}
    jobs = []
    for module in modules:
        prepare = getattr(module, "prepare", None)
        symbol = getattr(module, "symbol", None)
        if prepare is None or symbol is None:
            continue
        open_time, ohlcv = replay.replayed_bars(symbol)
        close = open_time + timeframe_ms(replay.timeframe)
        mine = _inside(close, after, before)
        keys = getattr(module, "metric_keys", None)
        read = metrics
        if keys is not None:
            wanted = [
                asset_code[a] * max(1, len(metric_names)) + name_code[n]
                for a, n in keys
                if a in asset_code and n in name_code
            ]
            read = metrics.iloc[np.flatnonzero(np.isin(pairs, wanted))]
        jobs.append(partial(prepare, replay.timeframe, open_time[mine], ohlcv[mine], read))
    return sum(bool(done) for done in _run_all(jobs))


def _run_all(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Each job's answer, in order: on a thread per CPU when there are several of both (a
    module's preparation is mostly numpy and torch, which release the GIL, and touches only
    that module's state; each thread infers on one torch thread)."""
    workers = min(len(jobs), usable_cpus())
    if workers < 2:
        return [job() for job in jobs]
    with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool:
        return list(pool.map(lambda job: job(), jobs))


def _inside(ts: np.ndarray, after: int | None, before: int | None) -> np.ndarray:
    """Where ``after < ts < before`` (an open bound when None)."""
    mask = np.ones(len(ts), dtype=bool)
    if after is not None:
        mask &= ts > after
    if before is not None:
        mask &= ts < before
    return mask
