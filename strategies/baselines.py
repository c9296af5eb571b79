"""Baseline policies: what a learned policy has to beat, run through the same engine.

* :class:`BuyAndHold` - all equity into one coin at the first decision, never traded again;
* :class:`EqualWeightRebalanced` - 1/N in every coin, rebalanced at every decision (CRP);
* :class:`EqualWeightBuyAndHold` - 1/N in every coin at the first decision, then left to drift;
* :class:`CashOnly` - everything in the quote currency (the daemon's ``hold`` policy).

Each is a plain :class:`~bot.engine.step.Policy` (``decide(context)``); the risk gate, the
planner, the venue's fees, slippage and filters apply to them exactly as to the Crypto Modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bot.engine.step import DecisionContext


class FixedWeights:
    """Fixed target weights: at the first decision only, or at every decision."""

    def __init__(self, name: str, weights: Mapping[str, float], *, every_decision: bool) -> None:
        self.name = name
        self.weights = dict(weights)
        self.every_decision = every_decision
        self._done = False

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        """The weights (only at the first decision, unless rebalancing at every one)."""
        if not context.deciding or (self._done and not self.every_decision):
            return None
        self._done = True
        return self.weights


class BuyAndHold(FixedWeights):
    """All equity into ``coin`` at the first decision; held to the end."""

    def __init__(self, coin: str) -> None:
        super().__init__(f"bh_{coin}", {coin: 1.0}, every_decision=False)


class EqualWeightRebalanced(FixedWeights):
    """1/N of equity in each coin, rebalanced at every decision (the constant rebalanced
    portfolio of the online portfolio selection literature)."""

    def __init__(self, coins: Sequence[str]) -> None:
        super().__init__(
            "equal_weight", dict.fromkeys(coins, 1.0 / len(coins)), every_decision=True
        )


class EqualWeightBuyAndHold(FixedWeights):
    """1/N of equity in each coin at the first decision, then never traded."""

    def __init__(self, coins: Sequence[str]) -> None:
        super().__init__(
            "equal_weight_bh", dict.fromkeys(coins, 1.0 / len(coins)), every_decision=False
        )


class CashOnly(FixedWeights):
    """Everything in the quote currency at every decision (sells whatever is held)."""

    def __init__(self) -> None:
        super().__init__("cash", {}, every_decision=True)


def baselines(coins: Sequence[str]) -> list[FixedWeights]:
    """Every baseline of a portfolio: buy & hold of each coin, and both equal-weight ones."""
    return [
        *(BuyAndHold(c) for c in coins),
        EqualWeightRebalanced(coins),
        EqualWeightBuyAndHold(coins),
    ]
