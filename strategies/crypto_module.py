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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from bot.events import Bar, Event, Metric, ModuleDecision
from bot.timeframes import timeframe_ms
from strategies.agents.observation import COIN_ROW, FeatureSchema, ObservationWindow, with_position
from strategies.features import FeatureState
from strategies.registry import LoadedCryptoModule, load_crypto_module


class CryptoModule:
    """One coin's trained module as an event handler.

    ``symbol`` (e.g. ``BTC/USDT``) selects the bars it reads; bars of other symbols or
    timeframes are ignored.
    """

    def __init__(self, model: LoadedCryptoModule, symbol: str) -> None:
        self.model, self.symbol = model, symbol
        schema = model.schema
        self.window = schema.window
        self.timeframe = schema.timeframe
        step = timeframe_ms(schema.timeframe)
        if model.feature_spec is None and schema.metric_features:
            raise ValueError(f"model {model.id} has metric features but no feature spec")
        self._features = (
            None if model.feature_spec is None else FeatureState(model.feature_spec, step)
        )
        self._states = ObservationWindow(schema.window, len(schema.metric_features))
        self._signals: deque[float] = deque([0.0] * schema.window, maxlen=schema.window)
        self.position = 0.0
        self.signal = 0
        """The EAM's signal at the last bar (-1 sell, 0 hold, +1 buy; 0 without an EAM)."""
        self.ready = False
        """Whether the last decision came from the networks (full window, DRU ready)."""

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

    def on_metric(self, metric: Metric) -> None:
        """Take a metric event (the feature state keeps those it uses until they are known)."""
        if self._features is not None:
            self._features.on_metric(metric)

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        """The decision at the close of ``bar``, or None for a bar of another symbol or
        timeframe. Call it for every bar of the coin, in order (it advances the state).

        ``position``: what the account holds in the coin (0 cash, 1 coin), the SAM's position
        input; None keeps the module's own last action (training's assumption, and warm-up)."""
        if bar.symbol != self.symbol or bar.timeframe != self.timeframe:
            return None
        if self._features is None:
            features, ready = np.zeros(0), True
        else:
            features = self._features.on_bar(bar)
            ready = self._features.ready
        state = self._states.push(
            (bar.open, bar.high, bar.low, bar.close, bar.volume), features, ready
        )
        if position is not None:
            self.position = float(position)
        return self._decide(bar.ts, state, ready)

    @torch.no_grad()
    def _decide(self, ts: int, state: np.ndarray | None, ready: bool) -> ModuleDecision:
        self.signal, self.ready = 0, False
        if state is None:  # no full window yet: as in training, the signal is 0 here
            self._signals.append(0.0)
            self.position = 0.0
            return ModuleDecision(ts, self.model_id, self.coin, 1.0, 0.0)
        sam_state = state
        if self.model.eam is not None:
            self.signal = int(self.model.eam(torch.from_numpy(state)[None]).argmax(dim=1)) - 1
            self._signals.append(float(self.signal))
            channel = np.zeros((1, 2, self.window), dtype=np.float32)
            channel[0, COIN_ROW] = np.asarray(self._signals, dtype=np.float32)
            sam_state = np.concatenate((state, channel), axis=0)
        if not ready:  # the DRU is still warming up: stay in cash
            self.position = 0.0
            return ModuleDecision(ts, self.model_id, self.coin, 1.0, 0.0)
        obs = torch.from_numpy(with_position(sam_state, self.position))[None]
        self.position = float(self.model.sam(obs).argmax(dim=1))
        self.ready = True
        return ModuleDecision(ts, self.model_id, self.coin, 1.0 - self.position, self.position)

    def warm_up(self, events: Iterable[Event]) -> int:
        """Replay past ``Bar``/``Metric`` events (their decisions are dropped), so that a module
        plugged at run time starts with a full window and warm features; returns the bars
        read."""
        bars = 0
        for event in events:
            if isinstance(event, Metric):
                self.on_metric(event)
            elif isinstance(event, Bar) and self.decide(event) is not None:
                bars += 1
        return bars
