"""The Crypto Module handler: a trained EAM + SAM turned into bar-by-bar decisions.

Inference only: the handler holds the two networks in eval mode and nothing of training (no
optimiser, no replay buffer, no target network). It is plain synchronous code (DESIGN
property 2): ``on_metric`` reads metrics, and ``decide`` turns each closed bar of its coin into
one :class:`~bot.events.ModuleDecision` (the paper's weight pair ``d_t^i``) for the portfolio
vote. The EAM's last signal and
whether the module is warm are kept as attributes (``signal``, ``ready``).

The state is built exactly as in training (DESIGN property 4): the DRU's
:class:`~strategies.features.FeatureState` (bit-identical to the batch features) feeds an
:class:`~strategies.agents.observation.ObservationWindow` (bit-identical to the batch states);
the EAM's signal of each bar joins a window of signals, and the SAM reads the state, that window
and the position it chose at the previous bar, as it did in its environment.

Two faster paths give the same results (tests compare them with the bar-by-bar one):

* :meth:`CryptoModule.prepare` (a backtest's replay, through ``PortfolioVote.prepare``)
  computes the decisions at every bar it will be given in a few forward passes
  (:mod:`strategies.module_outputs`); ``decide`` then reads them at the position it is given.
  A bar the plan did not foresee (or a position other than 0 or 1) makes the module catch up:
  its state is rebuilt exactly as if it had read everything bar by bar, and it goes on so.
* :meth:`CryptoModule.warm_up` reads a whole stored history at once the same way, and leaves
  the feature state, the observation window, the signal window and the position exactly as
  reading it one event at a time does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bot.events import Bar, Event, Metric, ModuleDecision
from bot.timeframes import timeframe_ms
from strategies.agents.observation import COIN_ROW, FeatureSchema, ObservationWindow
from strategies.explain import DecisionInputs
from strategies.features import FeatureState
from strategies.features.pool import split_id
from strategies.module_outputs import (
    eam_signal,
    infer_on_one_thread,
    network_outputs,
    own_positions,
    sam_action,
)
from strategies.plans import PlanFollower
from strategies.registry import LoadedCryptoModule, load_crypto_module

"""A metric history's columns (``known_at`` is the ``Metric``'s ``ts``)."""


_new = tuple.__new__


@dataclass
class _Plan:
    """Decisions computed ahead for the bars a module will be given (see ``prepare``).

    Flat lists of numbers (few objects for the garbage collector to walk during a replay)."""

    model_id: str
    coin: str
    closes: list[int]
    """Close time of each bar, in order ..."""
    bars: list[tuple[int, float, float, float, float, float]]
    """... and its (open time, open, high, low, close, volume)."""
    deciding: list[bool]
    """Whether the SAM decides at bar ``i``: a full window and the DRU ready (else cash)."""
    signals: list[int]
    actions: list[float]
    """The SAM's action at bar ``i`` holding position ``p`` is ``actions[2 * i + p]`` (0.0 all
    cash, 1.0 all coin)."""
    settled: int = 0
    """Near ties the single-bar calls settled while planning."""
    cursor: int = 0
    """Bars decided so far."""
    received: list[tuple[int, Sequence[Metric]]] = field(default_factory=list)
    """The metrics given meanwhile, as given: (bars read before, metrics) per hand-off."""


class CryptoModule(PlanFollower):
    """One coin's trained module as an event handler.

    ``symbol`` (e.g. ``BTC/USDT``) selects the bars it reads; bars of other symbols or
    timeframes are ignored.
    """

    def __init__(self, model: LoadedCryptoModule, symbol: str) -> None:
        infer_on_one_thread()
        self.model, self.symbol = model, symbol
        schema = model.schema
        self.window = schema.window
        self.timeframe = schema.timeframe
        self._step = timeframe_ms(schema.timeframe)
        if model.feature_spec is None and schema.metric_features:
            raise ValueError(f"model {model.id} has metric features but no feature spec")
        self._reset()
        self.position = 0.0
        self.signal = 0
        """The EAM's signal at the last bar (-1 sell, 0 hold, +1 buy; 0 without an EAM)."""
        self.ready = False
        """Whether the last decision came from the networks (full window, DRU ready)."""
        self.last_inputs: DecisionInputs | None = None
        """What the networks read at the last decision taken bar by bar from them (None
        otherwise): what :func:`strategies.explain.explain_decision` explains."""

    def _reset(self) -> None:
        """The state of a module that has read nothing."""
        spec = self.model.feature_spec
        self._features = None if spec is None else FeatureState(spec, self._step)
        self.metric_keys: frozenset[tuple[str, str]] = frozenset(
            () if spec is None else (split_id(i) for i in spec.metric_ids)
        )
        """The (asset, name) of the metrics its features read (``on_metric`` ignores others)."""
        self._states = ObservationWindow(self.window, len(self.model.schema.metric_features))
        self._signals: deque[float] = deque([0.0] * self.window, maxlen=self.window)
        self._bars = 0
        self._plan: _Plan | None = None

    @classmethod
    def load(cls, folder: Path, symbol: str, expected: FeatureSchema | None = None) -> CryptoModule:
        """Load a registry folder (refusing a mismatched feature schema) as a handler."""
        return cls(load_crypto_module(folder, expected), symbol)

    @property
    def coin(self) -> str:
        """The coin this module trades."""
        return self.model.coin

    @property
    def model_id(self) -> str:
        """The registry id of the trained module."""
        return self.model.id

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        """The decision at the close of ``bar``, or None for a bar of another symbol or
        timeframe. Call it for every bar of the coin, in order (it advances the state).

        ``position``: what the account holds in the coin (0 cash, 1 coin), the SAM's position
        input; None keeps the module's own last action (training's assumption, and warm-up)."""
        if bar.symbol != self.symbol or bar.timeframe != self.timeframe:
            return None
        if self._plan is not None:
            decision = self._planned(self._plan, bar, position)
            if decision is not None:
                return decision
            self._catch_up(bar.exchange)
        if self._features is None:
            features, ready = np.zeros(0), True
        else:
            features = self._features.on_bar(bar)
            ready = self._features.ready
        self._bars += 1
        state = self._states.push(
            (bar.open, bar.high, bar.low, bar.close, bar.volume), features, ready
        )
        if position is not None:
            self.position = float(position)
        return self._decide(bar.ts, state, ready)

    def _decide(self, ts: int, state: np.ndarray | None, ready: bool) -> ModuleDecision:
        self.signal, self.ready, self.last_inputs = 0, False, None
        if state is None:  # no full window yet: as in training, the signal is 0 here
            self._signals.append(0.0)
            self.position = 0.0
            return ModuleDecision(ts, self.model_id, self.coin, 1.0, 0.0)
        infer_on_one_thread()
        sam_state = state
        if self.model.eam is not None:
            self.signal = eam_signal(self.model, state)
            self._signals.append(float(self.signal))
            channel = np.zeros((1, 2, self.window), dtype=np.float32)
            channel[0, COIN_ROW] = np.asarray(self._signals, dtype=np.float32)
            sam_state = np.concatenate((state, channel), axis=0)
        if not ready:  # the DRU is still warming up: stay in cash
            self.position = 0.0
            return ModuleDecision(ts, self.model_id, self.coin, 1.0, 0.0)
        self.last_inputs = DecisionInputs(ts, state, sam_state, self.position)
        self.position = float(sam_action(self.model, sam_state, self.position))
        self.ready = True
        return ModuleDecision(ts, self.model_id, self.coin, 1.0 - self.position, self.position)

    # -- whole histories at once ---------------------------------------------------------------

    def prepare(
        self, timeframe: str, open_time: np.ndarray, ohlcv: np.ndarray, metrics: pd.DataFrame
    ) -> bool:
        """Compute the decisions at every bar the module will be given, in a few forward
        passes; :meth:`decide` then reads them (same decisions, notes and attributes as bar by
        bar, at whatever position it is given).

        ``open_time (T,)`` and ``ohlcv (T, 5)``: the coin's bars at ``timeframe``, in the order
        ``decide`` will get them; ``metrics`` (``METRIC_COLUMNS``): the metric events in
        the order ``on_metric`` will get them, each before the first bar closing at or after
        its known time (a replay's order). Only a module that has read nothing prepares
        (returns False otherwise, or for another timeframe); a bar the plan did not foresee
        makes it catch up and go on bar by bar.
        """
        if timeframe != self.timeframe or not self.fresh:
            return False
        open_time = np.asarray(open_time, dtype=np.int64)
        ohlcv = np.asarray(ohlcv, dtype=np.float64).reshape(-1, 5)
        close = open_time + self._step
        if len(close) > 1 and not (np.diff(close) > 0).all():
            return False  # bar by bar refuses them where they go wrong
        if self._features is None:
            features, ready = np.zeros((len(close), 0)), np.ones(len(close), dtype=bool)
        else:
            frame = FeatureState(self._features.spec, self._step).read_history(close, metrics)
            features, ready = frame.features, frame.ready
        outputs = network_outputs(self.model, ohlcv, features, ready)
        self._plan = _Plan(
            model_id=self.model_id,
            coin=self.coin,
            closes=close.tolist(),
            bars=list(zip(open_time.tolist(), *ohlcv.T.tolist(), strict=True)),
            deciding=(ready & (np.arange(len(close)) >= self.window - 1)).tolist(),
            signals=outputs.signals.astype(np.int64).tolist(),
            actions=outputs.actions.ravel().astype(np.float64).tolist(),
            settled=outputs.settled,
        )
        return True

    def _planned(self, plan: _Plan, bar: Bar, position: float | None) -> ModuleDecision | None:
        """The planned decision at ``bar``, or None when the plan does not cover it."""
        i = plan.cursor
        # (open time, open, high, low, close, volume) and the close time: the bar foreseen?
        if i >= len(plan.bars) or bar[4:] != plan.bars[i] or bar[0] != plan.closes[i]:
            return None
        if position is not None:
            if position != 0.0 and position != 1.0:
                return None  # the plan scored positions 0 and 1 only
            self.position = float(position)
        plan.cursor = i + 1
        self.last_inputs = None  # a planned decision keeps no state (explain_history does)
        self.signal = plan.signals[i]  # 0 before a full window
        if not plan.deciding[i]:
            self.position, self.ready = 0.0, False
            return _new(ModuleDecision, (bar[0], plan.model_id, plan.coin, 1.0, 0.0))
        self.position = position = plan.actions[2 * i + (self.position == 1.0)]
        self.ready = True
        # tuple.__new__: no Python-level constructor call on the replay's hot path
        return _new(ModuleDecision, (bar[0], plan.model_id, plan.coin, 1.0 - position, position))

    def _catch_up(self, exchange: str) -> None:
        """Leave the plan: rebuild the state as reading its bars and metrics one event at a
        time would have left it (the position is the one decided last)."""
        plan = self._plan
        assert plan is not None
        position, signal, ready = self.position, self.signal, self.ready
        events = self._events_read(plan, exchange)
        self._reset()
        self.warm_up(events)
        self.position, self.signal, self.ready = position, signal, ready

    def warm_up(self, events: Iterable[Event], *, at_once: bool = True) -> int:
        """Replay past ``Bar``/``Metric`` events (their decisions are dropped), so that a module
        plugged at run time starts with a full window and warm features; returns the bars
        read.

        A module that has read nothing reads them at once (``at_once``: features, states and
        network outputs in a few batched passes), ending in exactly the state reading them one
        by one leaves; otherwise, or for events out of publish order, one by one."""
        events = list(events)
        if at_once and self.fresh:
            read = self._read_at_once(events)
            if read is not None:
                return read
        bars = 0
        for event in events:
            if isinstance(event, Metric):
                self.on_metric(event)
            elif isinstance(event, Bar) and self.decide(event) is not None:
                bars += 1
        return bars

    def _read_at_once(self, events: list[Event]) -> int | None:
        """Read ``events`` with the batched path; None (nothing read) when it cannot."""
        read = self._features_at_once(events)
        if read is None:
            return None
        history, features, ready = read
        close, ohlcv = history.close, history.ohlcv
        outputs = network_outputs(self.model, ohlcv, features, ready)
        positions = own_positions(outputs, ready, self.window)
        self._states.extend(ohlcv, features, ready)
        self._signals.extend(outputs.signals[-self.window :].tolist())
        self._bars = len(close)
        last = len(close) - 1
        self.position = float(positions[last]) if last >= 0 else self.position
        if last >= self.window - 1:
            self.signal = int(outputs.signals[last])
            self.ready = bool(ready[last])
        elif last >= 0:
            self.signal, self.ready = 0, False
        return len(close)
