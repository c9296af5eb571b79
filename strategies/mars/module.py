"""One coin's MARS ensemble as a bar-by-bar handler: every variant's position at each close.

The state is built exactly as in training (the DRU's :class:`~strategies.features.FeatureState`
feeding an :class:`~strategies.agents.observation.ObservationWindow`). At each closed bar of its
coin the handler runs the learned variants (one batched forward pass of the
:class:`~strategies.mars.network.VariantStack`), each reading its *own* last position, as in its
environment, and masks a variant's "coin" wherever its safety critic's estimate exceeds its
threshold (the variant holds cash there); then the rule variants: ``cash`` (0), ``hold`` (1)
and ``trend`` (1 while the close is above its mean of the last ``trend_days`` days, as
:class:`~strategies.baselines.TrendFilter`). While the window or the DRU is not ready, the
learned variants hold cash (as a Crypto Module does).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from bot.events import Bar, Metric
from bot.timeframes import DAY_MS, timeframe_ms
from strategies.agents.observation import CASH_ROW, COIN_ROW, ObservationWindow
from strategies.features import FeatureState
from strategies.mars.artifact import LoadedEnsemble


@dataclass(frozen=True)
class VariantStep:
    """What every variant of one coin did at the close ``ts``.

    ``positions (K,)``: learned variants then rule variants (0 cash, 1 coin), after the safety
    masks; ``safety (K_learned,)``: the safety critics' estimates (NaN while not ready);
    ``dru``: the coin's refined on-chain components at the close; ``ready``: the networks
    decided (full window, DRU ready)."""

    ts: int
    positions: np.ndarray
    safety: np.ndarray
    dru: np.ndarray
    ready: bool


class MarsModule:
    """A coin's trained ensemble as an event handler (bars of ``symbol`` at its timeframe)."""

    def __init__(self, model: LoadedEnsemble, symbol: str, trend_days: int) -> None:
        self.model, self.symbol = model, symbol
        schema = model.schema
        self.timeframe = schema.timeframe
        if model.feature_spec is None and schema.metric_features:
            raise ValueError(f"ensemble {model.id} has metric features but no feature spec")
        step = timeframe_ms(schema.timeframe)
        self._features = (
            None if model.feature_spec is None else FeatureState(model.feature_spec, step)
        )
        self._states = ObservationWindow(schema.window, len(schema.metric_features))
        self.learned = tuple(v.name for v in model.mars.variants)
        self.rules = tuple(model.mars.baselines)
        self.names = (*self.learned, *self.rules)
        self.threshold = torch.tensor([v.threshold for v in model.mars.variants])
        self.position = torch.zeros(len(self.learned))
        self._closes: deque[float] = deque(maxlen=max(1, round(trend_days * DAY_MS / step)))

    @property
    def coin(self) -> str:
        """The coin this ensemble trades."""
        return self.model.coin

    @property
    def model_id(self) -> str:
        """The artifact's id."""
        return self.model.id

    @property
    def train_end_ms(self) -> int:
        """Close of the last bar the variants trained on."""
        return self.model.train_end_ms

    def on_metric(self, metric: Metric) -> None:
        """Take a metric event (the DRU keeps those it uses)."""
        if self._features is not None:
            self._features.on_metric(metric)

    def on_bar(self, bar: Bar) -> VariantStep | None:
        """Every variant's position at the close of ``bar`` (None for another symbol or
        timeframe). Call it for every bar of the coin, in order."""
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
        self._closes.append(float(bar.close))
        learned, safety = self._learned(state, ready)
        rules = np.array([self._rule(name, bar.close) for name in self.rules])
        dru = np.asarray(features, dtype=np.float64) if ready else np.zeros(len(features))
        return VariantStep(
            bar.ts,
            np.concatenate((learned, rules)),
            safety,
            np.nan_to_num(dru),
            state is not None and ready,
        )

    @torch.no_grad()
    def _learned(self, state: np.ndarray | None, ready: bool) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.learned)
        if state is None or not ready:
            self.position = torch.zeros(k)
            return np.zeros(k), np.full(k, np.nan)
        network = self.model.network
        coin = torch.from_numpy(np.ascontiguousarray(state[:, COIN_ROW, :].T))
        coin = coin.expand(k, 1, *coin.shape)
        cash = None
        if np.any(state[:, CASH_ROW, :]):
            cash_row = torch.from_numpy(np.ascontiguousarray(state[:, CASH_ROW, :].T))
            cash = cash_row.expand(k, 1, *cash_row.shape)
        features = network.features(coin, cash)
        q = network.q_values(features, self.position[:, None])[:, 0]
        safety = torch.sigmoid(network.safety_logits(features))[:, 0]
        choice = q.argmax(dim=1)
        unsafe = safety > self.threshold
        self.position = torch.where(unsafe, torch.zeros_like(choice), choice).float()
        return self.position.numpy().astype(np.float64), safety.numpy().astype(np.float64)

    def _rule(self, name: str, close: float) -> float:
        if name == "cash":
            return 0.0
        if name == "hold":
            return 1.0
        closes = self._closes  # trend
        full = len(closes) == closes.maxlen
        return float(full and close > sum(closes) / len(closes))
