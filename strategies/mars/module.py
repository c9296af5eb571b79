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

Replays: :meth:`MarsModule.prepare` computes every step of a known history at once (the DRU's
whole history, the variants' Q-values for both positions and their safety estimates in a few
batched passes, then each variant's own position scanned bar after bar), and :meth:`on_bar`
then reads them. As for a Crypto Module (:mod:`strategies.module_outputs`), a bar where a
variant's two Q-values or its safety estimate and threshold are within :data:`NEAR_TIE` is
settled by the bar-by-bar call itself, so every position is the bar-by-bar path's; the safety
estimates of the other bars equal it to rounding (they decide nothing downstream).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from bot.events import Bar, Event, Metric
from bot.timeframes import bars_in_days, timeframe_ms
from strategies.agents.observation import (
    CASH_ROW,
    COIN_ROW,
    ObservationWindow,
    bar_rows,
    coin_rows_between,
    metric_rows,
    observations_between,
)
from strategies.features import FeatureState
from strategies.features.pool import split_id
from strategies.mars.artifact import LoadedEnsemble
from strategies.module_outputs import CHUNK, NEAR_TIE, infer_on_one_thread
from strategies.plans import PlanFollower


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


@dataclass
class _Plan:
    """The steps computed ahead for the bars the ensemble will be given (see ``prepare``)."""

    closes: list[int]
    """Close time of each bar, in order ..."""
    bars: list[tuple[int, float, float, float, float, float]]
    """... and its (open time, open, high, low, close, volume)."""
    positions: np.ndarray
    """``(T, K + R)``: every variant's position at each bar (learned, then rules)."""
    safety: np.ndarray
    dru: np.ndarray
    ready: list[bool]
    settled: int = 0
    """Bars the single-bar call settled (near ties) while planning."""
    cursor: int = 0
    received: list[tuple[int, Sequence[Metric]]] = field(default_factory=list)
    """The metrics given meanwhile, as given: (bars read before, metrics) per hand-off."""


class MarsModule(PlanFollower):
    """A coin's trained ensemble as an event handler (bars of ``symbol`` at its timeframe)."""

    def __init__(self, model: LoadedEnsemble, symbol: str, trend_days: int) -> None:
        self.model, self.symbol = model, symbol
        schema = model.schema
        self.timeframe = schema.timeframe
        if model.feature_spec is None and schema.metric_features:
            raise ValueError(f"ensemble {model.id} has metric features but no feature spec")
        self._step = timeframe_ms(schema.timeframe)
        self._trend_bars = bars_in_days(trend_days, schema.timeframe)
        self.learned = tuple(v.name for v in model.mars.variants)
        self.rules = tuple(model.mars.baselines)
        self.names = (*self.learned, *self.rules)
        self.threshold = torch.tensor([v.threshold for v in model.mars.variants])
        spec = model.feature_spec
        self.metric_keys: frozenset[tuple[str, str]] = frozenset(
            () if spec is None else (split_id(i) for i in spec.metric_ids)
        )
        """The (asset, name) of the metrics its DRU reads (``on_metric`` ignores others)."""
        self._reset()

    def _reset(self) -> None:
        """The state of an ensemble that has read nothing."""
        spec, schema = self.model.feature_spec, self.model.schema
        self._features = None if spec is None else FeatureState(spec, self._step)
        self._states = ObservationWindow(schema.window, len(schema.metric_features))
        self.position = torch.zeros(len(self.learned))
        self._closes: deque[float] = deque(maxlen=self._trend_bars)
        self._bars = 0
        self._plan: _Plan | None = None

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

    @property
    def settled(self) -> int:
        """Bars of the plan settled one at a time (near ties); 0 without a plan."""
        return 0 if self._plan is None else self._plan.settled

    def on_bar(self, bar: Bar) -> VariantStep | None:
        """Every variant's position at the close of ``bar`` (None for another symbol or
        timeframe). Call it for every bar of the coin, in order."""
        if bar.symbol != self.symbol or bar.timeframe != self.timeframe:
            return None
        if self._plan is not None:
            planned = self._planned(self._plan, bar)
            if planned is not None:
                return planned
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
        self._closes.append(float(bar.close))
        learned, safety = self._learned(state, ready)
        rules = np.array([_rule(name, bar.close, self._closes) for name in self.rules])
        dru = np.asarray(features, dtype=np.float64) if ready else np.zeros(len(features))
        return VariantStep(
            bar.ts,
            np.concatenate((learned, rules)),
            safety,
            np.nan_to_num(dru),
            state is not None and ready,
        )

    def _learned(self, state: np.ndarray | None, ready: bool) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.learned)
        if state is None or not ready:
            self.position = torch.zeros(k)
            return np.zeros(k), np.full(k, np.nan)
        self.position, safety = self._variants_at(state, self.position)
        return self.position.numpy().astype(np.float64), safety.numpy().astype(np.float64)

    @torch.no_grad()
    def _variants_at(
        self, state: np.ndarray, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned variants' positions and safety estimates at one state ``(F, 2, n)``,
        each holding its ``position``: the bar-by-bar call."""
        infer_on_one_thread()
        k = len(self.learned)
        network = self.model.network
        coin = torch.from_numpy(np.ascontiguousarray(state[:, COIN_ROW, :].T))
        coin = coin.expand(k, 1, *coin.shape)
        cash = None
        if np.any(state[:, CASH_ROW, :]):
            cash_row = torch.from_numpy(np.ascontiguousarray(state[:, CASH_ROW, :].T))
            cash = cash_row.expand(k, 1, *cash_row.shape)
        features = network.features(coin, cash)
        q = network.q_values(features, position[:, None])[:, 0]
        safety = torch.sigmoid(network.safety_logits(features))[:, 0]
        choice = q.argmax(dim=1)
        unsafe = safety > self.threshold
        return torch.where(unsafe, torch.zeros_like(choice), choice).float(), safety

    # -- whole histories at once ---------------------------------------------------------------

    def prepare(
        self, timeframe: str, open_time: np.ndarray, ohlcv: np.ndarray, metrics: pd.DataFrame
    ) -> bool:
        """Compute the steps at every bar the ensemble will be given, in a few forward passes;
        :meth:`on_bar` then reads them (the same positions as bar by bar; module docstring).

        ``open_time (T,)`` and ``ohlcv (T, 5)``: the coin's bars at ``timeframe``, in the order
        ``on_bar`` will get them; ``metrics``: the metric events in the order ``on_metric`` will
        get them, each before the first bar closing at or after its known time (a replay's
        order). Only an ensemble that has read nothing prepares (returns False otherwise, or for
        another timeframe); a bar the plan did not foresee makes it catch up and go on bar by
        bar."""
        if timeframe != self.timeframe or not self.fresh:
            return False
        open_time = np.asarray(open_time, dtype=np.int64)
        ohlcv = np.asarray(ohlcv, dtype=np.float64).reshape(-1, 5)
        close = open_time + self._step
        if len(close) > 1 and not (np.diff(close) > 0).all():
            return False
        total = len(close)
        if self._features is None:
            features, ready = np.zeros((total, 0)), np.ones(total, dtype=bool)
        else:
            frame = FeatureState(self._features.spec, self._step).read_history(close, metrics)
            features, ready = frame.features, np.asarray(frame.ready, dtype=bool)
        full = np.arange(total) >= self.model.schema.window - 1
        learned, safety, settled = self._learned_history(ohlcv, features, ready, ready & full)
        rules = _rules_history(self.rules, ohlcv[:, 3].tolist(), self._trend_bars)
        dru = np.nan_to_num(np.where(ready[:, None], features, 0.0))
        self._plan = _Plan(
            closes=close.tolist(),
            bars=list(zip(open_time.tolist(), *ohlcv.T.tolist(), strict=True)),
            positions=np.concatenate((learned, rules), axis=1),
            safety=safety,
            dru=dru,
            ready=(ready & full).tolist(),
            settled=settled,
        )
        return True

    @torch.no_grad()
    def _learned_history(
        self, ohlcv: np.ndarray, features: np.ndarray, ready: np.ndarray, deciding: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The learned variants' positions ``(T, K)`` and safety estimates ``(T, K)`` at every
        bar from the DRU's ``features``/``ready``: cash and NaN where they do not decide (the
        window not full or the DRU not ready), and how many bars a single-bar call settled."""
        infer_on_one_thread()
        total, k = len(ohlcv), len(self.learned)
        positions, safety = np.zeros((total, k)), np.full((total, k), np.nan)
        if k == 0 or not deciding.any():
            return positions, safety, 0
        window, network = self.model.schema.window, self.model.network
        rows, metrics = bar_rows(ohlcv), metric_rows(features, ready)
        q = np.zeros((total, k, 2, 2), dtype=np.float32)  # bar, variant, position held, action
        estimate = np.zeros((total, k), dtype=np.float32)
        for start in range(window - 1, total, CHUNK):
            stop = min(total, start + CHUNK)
            index = np.flatnonzero(deciding[start:stop])
            if len(index) == 0:
                continue
            coin = coin_rows_between(rows, metrics, window, start, stop)[index]
            batch = torch.from_numpy(np.ascontiguousarray(coin.transpose(0, 2, 1)))
            body = network.features(batch.expand(k, *batch.shape), None)
            for held in (0, 1):
                values = network.q_values(body, torch.full((k, len(index)), float(held)))
                q[start + index, :, held] = values.permute(1, 0, 2).numpy()
            logits = network.safety_logits(body)
            estimate[start + index] = torch.sigmoid(logits).T.numpy()
        threshold = self.threshold.numpy()
        scale = 1.0 + np.abs(q).max(axis=3)
        margin = np.abs(q[..., 1] - q[..., 0])
        near = ~(margin > NEAR_TIE * scale)  # (T, K, 2); NaN counts as near
        near_safety = ~(np.abs(estimate - threshold) > NEAR_TIE)  # (T, K)
        choice = q.argmax(axis=3)  # (T, K, 2)
        unsafe = estimate > threshold
        held = [0] * k
        settled = 0
        for t in np.flatnonzero(deciding).tolist():
            if t == 0 or not deciding[t - 1]:
                held = [0] * k  # the bar before held cash
            columns = np.arange(k), held
            if near[t][columns].any() or near_safety[t].any():
                state = observations_between(rows, metrics, window, t, t + 1)[0]
                position, estimated = self._variants_at(state, torch.tensor(held).float())
                positions[t] = position.numpy()
                safety[t] = estimated.numpy()
                settled += 1
            else:
                positions[t] = np.where(unsafe[t], 0, choice[t][columns])
                safety[t] = estimate[t]
            held = positions[t].astype(np.int64).tolist()
        return positions, safety, settled

    def _planned(self, plan: _Plan, bar: Bar) -> VariantStep | None:
        """The planned step at ``bar``, or None when the plan does not cover it."""
        i = plan.cursor
        if i >= len(plan.bars) or bar[4:] != plan.bars[i] or bar[0] != plan.closes[i]:
            return None
        plan.cursor = i + 1
        return VariantStep(
            bar.ts,
            plan.positions[i].copy(),
            plan.safety[i].copy(),
            plan.dru[i].copy(),
            plan.ready[i],
        )

    def _catch_up(self, exchange: str) -> None:
        """Leave the plan: rebuild the state that reading its bars and metrics one event at a
        time would have left, at once where it can (the DRU's history read at once, the
        windows filled, the variants' positions the plan's last ones), else one by one."""
        plan = self._plan
        assert plan is not None
        events = self._events_read(plan, exchange)
        held = plan.positions[plan.cursor - 1, : len(self.learned)] if plan.cursor else None
        self._reset()
        if self._read_at_once(events, held):
            return
        for event in events:
            if isinstance(event, Metric):
                self.on_metric(event)
            elif isinstance(event, Bar):
                self.on_bar(event)

    def _read_at_once(self, events: list[Event], held: np.ndarray | None) -> bool:
        """Read ``events`` as one by one would, given the learned variants' positions after
        the last bar (``held``); False (nothing read) when the metrics came too late for it."""
        read = self._features_at_once(events)
        if read is None:
            return False
        history, features, ready = read
        close, ohlcv = history.close, history.ohlcv
        self._states.extend(ohlcv, features, ready)
        self._closes.extend(ohlcv[-self._trend_bars :, 3].tolist())
        self._bars = len(close)
        if held is not None:
            self.position = torch.from_numpy(held.astype(np.float32))
        return True


def _rule(name: str, close: float, closes: deque[float]) -> float:
    """A rule variant's position at a close (``closes``: the last ``trend_days`` closes, this
    one included)."""
    if name == "cash":
        return 0.0
    if name == "hold":
        return 1.0
    full = len(closes) == closes.maxlen  # trend
    return float(full and close > sum(closes) / len(closes))


def _rules_history(rules: Sequence[str], closes: list[float], trend_bars: int) -> np.ndarray:
    """The rule variants' positions ``(T, R)`` at every close, computed as bar by bar."""
    window: deque[float] = deque(maxlen=trend_bars)
    out = np.zeros((len(closes), len(rules)))
    for t, close in enumerate(closes):
        window.append(close)
        out[t] = [_rule(name, close, window) for name in rules]
    return out
