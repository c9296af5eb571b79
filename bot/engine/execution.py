"""Execution: a large order in slices over the interval, front-loaded when the signal decays.

An order above ``[execution].slice_above_volume_share`` of its coin's recent bar volume, or above
``slice_above_notional``, is split into up to ``max_slices`` slices spread over ``spread`` of the
bar interval after its decision. The schedule:

- ``twap``: equal slices at equal spacing;
- ``decay``: the policy's signal is measured by the lag-1 autocorrelation ``rho`` of its target
  weight of the coin over the last decisions; a signal that persists (``rho`` near 1) is
  executed TWAP, one that decays fast is front-loaded: slice ``i`` gets a share proportional to
  ``exp(-t_i / tau)``, ``tau`` being the signal's half-life in time (``-ln 2 / ln rho`` bars); a
  signal with no persistence (``rho <= 0``) is executed at once.

Slices are plain orders with their own client ids (``<parent id><slice number>``, Binance's
pattern allows it) and a time not to send before: the journal keeps them like any order, so
they are as crash-safe as a single one. The simulated venue prices each slice on the price path
of its bar with square-root market impact (:class:`bot.venues.sim.SimVenue`), so backtests show
what slicing saves.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from bot.engine.account import coin_of
from bot.engine.rules import DEFAULT_RULES, MarketRules
from bot.engine.step import Instant
from bot.events import SubmitOrder, TargetWeights
from config.schema import ExecutionConfig

DECISIONS_FOR_DECAY = 50
"""Target weights of a coin the decay is measured over."""


class Slice(NamedTuple):
    """A part of an order, sent ``offset_ms`` after its decision."""

    order: SubmitOrder
    offset_ms: int


class Slicer:
    """Splits a step's orders into slices (see the module docstring); follows the bars'
    volumes and the policy's targets through :meth:`observe`."""

    def __init__(
        self, cfg: ExecutionConfig, step_ms: int, rules: Mapping[str, MarketRules]
    ) -> None:
        self.cfg = cfg
        self.step_ms = step_ms
        self.rules = rules
        self._volumes: dict[str, deque[float]] = {}
        self._targets: dict[str, deque[float]] = {}

    @property
    def active(self) -> bool:
        """Whether any order can be sliced at all."""
        cfg = self.cfg
        return cfg.max_slices > 1 and (
            cfg.slice_above_volume_share is not None or cfg.slice_above_notional is not None
        )

    def observe(self, instant: Instant, target: TargetWeights | None) -> None:
        """Follow each coin's bar volume and the policy's target weight of it."""
        lookback = self.cfg.volume_lookback_bars
        for bar in instant.bars:
            coin = coin_of(bar.symbol)
            self._volumes.setdefault(coin, deque(maxlen=lookback)).append(bar.volume)
        if target is not None:
            for asset, weight in target.weights:
                self._targets.setdefault(asset, deque(maxlen=DECISIONS_FOR_DECAY)).append(weight)

    def decay(self, coin: str) -> float | None:
        """Lag-1 autocorrelation of the policy's target weight of ``coin`` (None: too few
        decisions, or a constant target)."""
        series = list(self._targets.get(coin, ()))
        if len(series) < 4:
            return None
        a, b = series[:-1], series[1:]
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True))
        var_a = sum((x - mean_a) ** 2 for x in a)
        var_b = sum((y - mean_b) ** 2 for y in b)
        if var_a <= 0 or var_b <= 0:
            return None
        return cov / math.sqrt(var_a * var_b)

    def slices(self, order: SubmitOrder) -> list[Slice]:
        """``order`` as slices (one slice, sent at once, when it is not to be sliced)."""
        count = self._count(order)
        if count <= 1:
            return [Slice(order, 0)]
        coin = coin_of(order.symbol)
        rules = self.rules.get(coin, DEFAULT_RULES)
        spacing = self.cfg.spread * self.step_ms / count
        shares = self._shares(coin, count, spacing)
        amounts = [rules.round_amount(order.amount * share) for share in shares]
        amounts[-1] = rules.round_amount(order.amount - sum(amounts[:-1]))  # the rest, to the lot
        price = order.reference_price
        if not all(rules.tradable(a, price) for a in amounts):
            return [Slice(order, 0)]
        return [
            Slice(
                order._replace(client_order_id=f"{order.client_order_id}{i + 1}", amount=amount),
                round(i * spacing),
            )
            for i, amount in enumerate(amounts)
        ]

    def _count(self, order: SubmitOrder) -> int:
        cfg = self.cfg
        notional = order.amount * order.reference_price
        ratio = 0.0
        if cfg.slice_above_notional is not None:
            ratio = max(ratio, notional / cfg.slice_above_notional)
        volumes = self._volumes.get(coin_of(order.symbol))
        if cfg.slice_above_volume_share is not None and volumes:
            mean = sum(volumes) / len(volumes)
            if mean > 0:
                ratio = max(ratio, order.amount / (cfg.slice_above_volume_share * mean))
        if ratio <= 1.0:
            return 1
        return min(cfg.max_slices, math.ceil(ratio))

    def _shares(self, coin: str, count: int, spacing_ms: float) -> list[float]:
        rho = self.decay(coin) if self.cfg.schedule == "decay" else None
        if rho is None or rho >= 0.999:
            return [1.0 / count] * count
        if rho <= 0.0:
            return [1.0] + [0.0] * (count - 1)
        tau_ms = -self.step_ms / math.log(rho)  # half-life -ln2/ln(rho) bars, over ln 2
        raw = [math.exp(-i * spacing_ms / tau_ms) for i in range(count)]
        total = sum(raw)
        return [r / total for r in raw]
