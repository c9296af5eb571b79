"""Baseline policies, run through the same engine as the Crypto Modules.

* :class:`BuyAndHold` - all equity into one coin at the first decision, never traded again;
* :class:`EqualWeightRebalanced` - 1/N in every coin, rebalanced at every decision (CRP);
* :class:`EqualWeightBuyAndHold` - 1/N in every coin at the first decision, then left to drift.

Each answers ``BarsClosed`` with ``TargetWeights`` like any policy; the risk gate, the planner,
the broker's fees, slippage and filters apply to them exactly as to the strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.bus import EventBus
from bot.events import BarsClosed, Event, TargetWeights


class _WeightsPolicy:
    """Emits fixed target weights, once or at every decision."""

    def __init__(self, name: str, weights: dict[str, float], quote: str, *, every_bar: bool):
        self.name = name
        self.weights = tuple(sorted({**weights, quote: 1.0 - sum(weights.values())}.items()))
        self.every_bar = every_bar
        self._emit: Callable[[Event], None] = lambda event: None
        self._done = False

    def attach(self, bus: EventBus) -> None:
        """Decide at every ``BarsClosed``."""
        self._emit = bus.emit
        bus.subscribe(BarsClosed, self.on_bars_closed)

    def on_bars_closed(self, event: BarsClosed) -> None:
        """Emit the weights (only the first time, unless rebalancing every bar)."""
        if self._done and not self.every_bar:
            return
        self._done = True
        self._emit(TargetWeights(event.ts, self.weights, self.name))


class BuyAndHold(_WeightsPolicy):
    """All equity into ``coin`` at the first decision; held to the end."""

    def __init__(self, coin: str, quote: str) -> None:
        super().__init__(f"bh_{coin}", {coin: 1.0}, quote, every_bar=False)


class EqualWeightRebalanced(_WeightsPolicy):
    """1/N of equity in each coin, rebalanced at every decision (the constant rebalanced
    portfolio of the online portfolio selection literature)."""

    def __init__(self, coins: Sequence[str], quote: str) -> None:
        super().__init__(
            "equal_weight", {c: 1.0 / len(coins) for c in coins}, quote, every_bar=True
        )


class EqualWeightBuyAndHold(_WeightsPolicy):
    """1/N of equity in each coin at the first decision, then never traded."""

    def __init__(self, coins: Sequence[str], quote: str) -> None:
        super().__init__(
            "equal_weight_bh", {c: 1.0 / len(coins) for c in coins}, quote, every_bar=False
        )


class CashOnly(_WeightsPolicy):
    """Everything in the quote currency at every decision (sells whatever is held)."""

    def __init__(self, quote: str) -> None:
        super().__init__("cash", {}, quote, every_bar=True)


def baselines(coins: Sequence[str], quote: str) -> list[_WeightsPolicy]:
    """Every baseline of a portfolio: buy & hold of each coin, and both equal-weight ones."""
    return [
        *(BuyAndHold(c, quote) for c in coins),
        EqualWeightRebalanced(coins, quote),
        EqualWeightBuyAndHold(coins, quote),
    ]
