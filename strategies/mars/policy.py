"""The ``mars`` and ``mars+manager`` policies: risk-profiled ensembles, a meta-controller and,
optionally, a manager that sets the portfolio's risk appetite.

At every instant (an engine :class:`~bot.engine.step.Policy`, so the risk gate and the venue
are the same as for every other policy):

1. each coin's ensemble (:class:`~strategies.mars.module.MarsModule`) gives every variant's
   position at the close; the regime features are updated
   (:class:`~strategies.mars.regime.RegimeTracker`);
2. the *record* grows: for every bar the variants never trained on (after their training
   window) the regime features, every variant's position and, one bar later, the coin's log
   return that followed. It is what the controller and the manager are fitted on: realised
   returns, out of sample, never the agents' own estimates;
3. at the first decision of each set of modules and every ``[mars.controller].refit_days``, the
   controller (and the manager) are refitted on the record known then (bars before now only);
   with ``[mars.controller].fit = false`` the controller is never fitted and keeps the uniform
   mix (its ablation);
4. every ``every_bars`` bars of a coin, the controller's weights over its variants are
   recomputed from the regime now; the coin's exposure is their blend ``e`` (0..1);
5. ``mars+manager``: every ``[mars.manager].every_bars`` decisions, the manager's gross exposure
   ``g`` (0..1) from the market-wide features; ``mars``: ``g = 1``;
6. the target weight of coin ``i`` is ``g * e_i / m`` (``m`` coins); a coin whose target is
   within ``[mars].rebalance_band`` of what the account holds keeps its holding (no trade for a
   small move of the blend).

Notes for observers: a :class:`~bot.events.VariantWeights` per coin and decision, a
:class:`~bot.events.GrossExposure` per decision, and a :class:`~bot.events.ModuleDecision` per
coin (cash and coin share of its sleeve) for the module diagnostics.

Module sets (*folds*): the walk-forward swaps the ensembles at every refit, as the Agent
Updating Unit would; each set reads the bars and metrics of its span and of the ``warmup_ms``
before it (a warm start, and the record of its validation window), and the set whose span holds
the instant decides. The live daemon runs one set over all time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bot.engine.step import DecisionContext
from bot.events import Bar, GrossExposure, Metric, ModuleDecision, VariantWeights
from bot.timeframes import DAY_MS, ms_to_iso, timeframe_ms
from config.schema import MarsConfig
from strategies.mars.controller import Controller, Record
from strategies.mars.manager import Manager, PortfolioRecord
from strategies.mars.module import MarsModule, VariantStep
from strategies.mars.regime import COIN_FEATURES, MARKET_FEATURES, RegimeSpec, RegimeTracker
from strategies.plans import ReplayHistory, prepare_modules

log = logging.getLogger(__name__)

MARS = "mars"
MARS_MANAGER = "mars+manager"
ALWAYS = (-(2**62), 2**62)


@dataclass
class ModuleSet:
    """The ensembles that decide in ``[start_ms, end_ms)`` (one per coin)."""

    start_ms: int
    end_ms: int
    modules: dict[str, MarsModule]

    def reads(self, ts: int, warmup_ms: int | None) -> bool:
        """Whether its modules read an event stamped ``ts``."""
        if ts >= self.end_ms:
            return False
        return warmup_ms is None or ts > self.start_ms - warmup_ms


@dataclass
class _Row:
    x: np.ndarray
    positions: np.ndarray
    train_end: int
    rho: float = math.nan


@dataclass
class _CoinState:
    alpha: np.ndarray | None = None
    bars: int = 0
    step: VariantStep | None = None
    module_id: str = ""
    exposure: float = 0.0
    record: dict[int, _Row] = field(default_factory=dict)
    last_ts: int | None = None
    last_close: float | None = None


class MarsPolicy:
    """Per-coin MARS ensembles under a meta-controller (and a manager with ``manager=True``)."""

    def __init__(
        self,
        quote: str,
        coins: Sequence[str],
        sets: Sequence[ModuleSet],
        mars: MarsConfig,
        *,
        timeframe: str,
        trend_days: int,
        cost: float,
        warmup_ms: int | None = None,
        manager: bool = False,
    ) -> None:
        self.name = MARS_MANAGER if manager else MARS
        self.quote, self.coins, self.mars = quote, tuple(coins), mars
        self.sets = sorted(sets, key=lambda s: s.start_ms)
        self.timeframe, self.cost, self.warmup_ms = timeframe, cost, warmup_ms
        self.bar_ms = timeframe_ms(timeframe)
        self.tracker = RegimeTracker(self.coins, RegimeSpec(self.bar_ms, trend_days))
        names = mars.names
        self.names = names
        self.width = len(COIN_FEATURES) + 1 + mars.dru_components
        self.controller = Controller(names, self.width)
        self.manager = Manager(mars.manager) if manager else None
        self.gross = 1.0 if self.manager is None else mars.manager.initial
        self._state = {c: _CoinState() for c in self.coins}
        self._market: dict[int, np.ndarray] = {}
        self._decisions = 0
        self._fitted_set: int | None = None
        self._fitted_at: int | None = None
        self.fits: list[dict[str, Any]] = []
        """A summary of every controller/manager fit (time, rows, objective before/after)."""

    # -- the engine's policy ---------------------------------------------------------------------

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        """Feed the instant to the ensembles, keep the record, decide the target weights."""
        instant = context.instant
        active = self._active(instant.ts)
        for metric in instant.metrics:
            self._on_metric(metric)
        bars = [b for b in instant.bars if self._coin_of(b) is not None]
        for bar in bars:
            self._on_close(bar)
        if bars:
            self._market[instant.ts] = self.tracker.market()
        for bar in bars:
            self._run_modules(bar, active)
        if not context.deciding:
            return None
        self._refit(instant.ts, active)
        return self._targets(context, active)

    def prepare(self, replay: ReplayHistory) -> int:
        """Before a replay: every ensemble computes its steps at all the bars of its span it
        will read (the bars and metrics after ``start - warmup_ms`` and before its end), in a
        few batched passes (:meth:`MarsModule.prepare`: the same positions as bar by bar);
        returns how many did."""
        prepared = 0
        for module_set in self.sets:
            after = None if self.warmup_ms is None else module_set.start_ms - self.warmup_ms
            prepared += prepare_modules(
                module_set.modules.values(), replay, after=after, before=module_set.end_ms
            )
        return prepared

    # -- feeding ---------------------------------------------------------------------------------

    def _coin_of(self, bar: Bar) -> str | None:
        coin = bar.symbol.split("/")[0]
        return coin if coin in self._state and bar.timeframe == self.timeframe else None

    def _active(self, ts: int) -> int | None:
        for index, module_set in enumerate(self.sets):
            if module_set.start_ms <= ts < module_set.end_ms:
                return index
        return None

    def _on_metric(self, metric: Metric) -> None:
        for module_set in self.sets:
            if module_set.reads(metric.ts, self.warmup_ms):
                for module in module_set.modules.values():
                    module.on_metric(metric)

    def _on_close(self, bar: Bar) -> None:
        """Regime features, and the return that completes the coin's previous record row."""
        coin = bar.symbol.split("/")[0]
        state = self._state[coin]
        self.tracker.on_close(coin, bar.close)
        if state.last_ts is not None and state.last_close:
            row = state.record.get(state.last_ts)
            if row is not None and bar.ts - state.last_ts <= self.bar_ms:
                row.rho = math.log(bar.close / state.last_close)
        state.last_ts, state.last_close = bar.ts, float(bar.close)

    def _run_modules(self, bar: Bar, active: int | None) -> None:
        coin = bar.symbol.split("/")[0]
        state = self._state[coin]
        x_base = np.append(self.tracker.coin(coin), self.tracker.breadth())
        for index, module_set in enumerate(self.sets):
            module = module_set.modules.get(coin)
            if module is None or not module_set.reads(bar.ts, self.warmup_ms):
                continue
            step = module.on_bar(bar)
            if step is None:
                continue
            if index == active:
                state.step, state.module_id = step, module.model_id
            if step.ready and bar.ts > module.train_end_ms:  # out of sample for its variants
                known = state.record.get(bar.ts)
                if known is None or known.train_end <= module.train_end_ms:  # newest wins
                    x = np.concatenate((x_base, self._dru(step)))
                    state.record[bar.ts] = _Row(x, step.positions.copy(), module.train_end_ms)

    def _dru(self, step: VariantStep) -> np.ndarray:
        out = np.zeros(self.mars.dru_components)
        n = min(len(step.dru), len(out))
        out[:n] = step.dru[:n]
        return out

    # -- fitting ---------------------------------------------------------------------------------

    def _refit(self, now: int, active: int | None) -> None:
        due = self._fitted_at is None or now - self._fitted_at >= (
            self.mars.controller.refit_days * DAY_MS
        )
        if not due and active == self._fitted_set:
            return
        self._fitted_set, self._fitted_at = active, now
        since = now - self.mars.controller.lookback_days * DAY_MS
        settings = self.mars.controller
        summary: dict[str, Any] = {"ts": now}
        if settings.fit:
            record = self.record(since, now)
            summary["controller"] = self.controller.fit(record, self.cost, settings)
        else:  # the ablation: the uniform mix, never fitted
            summary["controller"] = {"rows": 0, "fitted": False}
        if self.manager is not None:
            summary["manager"] = self.manager.fit(self.portfolio_record(since, now), self.cost)
        self.fits.append(summary)
        controller = (
            f"controller refitted on {summary['controller']['rows']} rows of realised returns"
            if settings.fit
            else "controller kept uniform ([mars.controller].fit = false)"
        )
        log.info(
            "%s at %s: %s%s",
            self.name,
            ms_to_iso(now),
            controller,
            "" if self.manager is None else f"; gross exposure now {self.gross:.2f}",
        )

    def record(self, since: int, until: int) -> Record:
        """The controller's record: rows of bars in ``[since, until)`` whose next-bar return is
        known (all coins, in coin then time order; runs of consecutive bars as segments)."""
        xs, positions, rho, segment = [], [], [], []
        run = 0
        for coin in self.coins:
            rows = sorted(self._state[coin].record.items())
            previous = None
            for ts, row in rows:
                if (
                    not since <= ts < until
                    or not math.isfinite(row.rho)
                    or ts + self.bar_ms > until
                ):
                    continue
                if previous is None or ts - previous > self.bar_ms:
                    run += 1
                previous = ts
                xs.append(row.x)
                positions.append(row.positions)
                rho.append(row.rho)
                segment.append(run)
        k = len(self.names)
        return Record(
            np.array(xs).reshape(-1, self.width),
            np.array(positions).reshape(-1, k),
            np.array(rho, dtype=np.float64),
            np.array(segment, dtype=np.int64),
        )

    def portfolio_record(self, since: int, until: int) -> PortfolioRecord:
        """The manager's record: instants where every coin has a row, with the sleeves the
        current controller gives the coins."""
        m = len(self.coins)
        common = None
        for coin in self.coins:
            times = {
                ts
                for ts, row in self._state[coin].record.items()
                if since <= ts < until and ts + self.bar_ms <= until and math.isfinite(row.rho)
            }
            common = times if common is None else common & times
        stamps = sorted((common or set()) & set(self._market))
        z = np.array([self._market[ts] for ts in stamps]).reshape(-1, len(MARKET_FEATURES))
        sleeves = np.zeros((len(stamps), m))
        rho = np.zeros((len(stamps), m))
        for j, coin in enumerate(self.coins):
            rows = [self._state[coin].record[ts] for ts in stamps]
            if rows:
                alpha = self.controller.weights(np.array([r.x for r in rows]))
                exposure = (alpha * np.array([r.positions for r in rows])).sum(axis=1)
                sleeves[:, j] = exposure / m
                rho[:, j] = [r.rho for r in rows]
        gaps = np.diff(np.array(stamps, dtype=np.int64)) > self.bar_ms if stamps else np.array([])
        segment = (
            np.concatenate(([0], np.cumsum(gaps))).astype(np.int64)
            if stamps
            else np.zeros(0, np.int64)
        )
        return PortfolioRecord(z, sleeves, rho, segment)

    # -- deciding --------------------------------------------------------------------------------

    def _targets(self, context: DecisionContext, active: int | None) -> dict[str, float]:
        ts = context.ts
        m = len(self.coins)
        self._decisions += 1
        if self.manager is not None and (self._decisions - 1) % self.mars.manager.every_bars == 0:
            self.gross = float(self.manager.exposure(self.tracker.market()))
        held = context.account.weights()
        targets: dict[str, float] = {}
        for coin in self.coins:
            state = self._state[coin]
            step = state.step if active is not None else None
            if step is None:
                state.exposure = 0.0
            elif step.ts == ts:  # a fresh close (after a missed bar the last exposure stands)
                if state.alpha is None or state.bars % self.mars.controller.every_bars == 0:
                    x = np.concatenate(
                        (self.tracker.coin(coin), [self.tracker.breadth()], self._dru(step))
                    )
                    state.alpha = self.controller.weights(x)
                state.bars += 1
                exposure = state.exposure = float(np.dot(state.alpha, step.positions))
                context.note(
                    VariantWeights(
                        ts,
                        coin,
                        tuple(zip(self.names, map(float, state.alpha), strict=True)),
                        tuple(zip(self.names, map(float, step.positions), strict=True)),
                        exposure,
                        self.name,
                    )
                )
                context.note(ModuleDecision(ts, state.module_id, coin, 1.0 - exposure, exposure))
            wanted = self.gross * state.exposure / m
            have = float(held.get(coin, 0.0))
            keep = wanted > 0.0 and abs(wanted - have) < self.mars.rebalance_band
            targets[coin] = have if keep else wanted
        context.note(GrossExposure(ts, self.gross, self.name))
        return targets
