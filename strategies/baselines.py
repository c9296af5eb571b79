"""Baseline policies: what a learned policy has to beat, run through the same engine.

* :class:`BuyAndHold` - all equity into one coin at the first decision, never traded again;
* :class:`EqualWeightRebalanced` - 1/N in every coin, rebalanced at every decision (CRP);
* :class:`EqualWeightBuyAndHold` - 1/N in every coin at the first decision, then left to drift;
* :class:`CashOnly` - everything in the quote currency (the daemon's ``hold`` policy);
* :class:`TrendFilter` - each coin held (1/N of equity) while its close is above its mean over
  the last ``days`` days, else that share in cash; what many users would run instead of a
  learned policy.

Each is a plain :class:`~bot.engine.step.Policy` (``decide(context)``); the risk gate, the
planner, the venue's fees, slippage and filters apply to them exactly as to the Crypto Modules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from bot.engine.step import DecisionContext
from bot.timeframes import bars_in_days


class Replay(Protocol):
    """What a policy's ``quiet_instants`` reads of a replay (``backtest.replay.ReplayDriver``)."""

    start_ms: int

    def instant_times(self) -> np.ndarray:
        """The close time of every instant, in order (warm-up included)."""
        ...


TREND_FILTER = "trend_filter"


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

    def quiet_instants(self, replay: Replay) -> np.ndarray | None:
        """Held weights trade only at the replay's first decision: every other instant is
        quiet, and a replay coasts through them. ``None`` when rebalancing at every
        decision."""
        if self.every_decision:
            return None
        times = replay.instant_times()
        quiet = np.ones(len(times), dtype=bool)
        first = int(np.searchsorted(times, replay.start_ms, side="left"))
        if not self._done and first < len(times):
            quiet[first] = False
        return quiet


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


class TrendFilter:
    """Each coin held with 1/N of equity while its last close is above the mean of its closes
    over the last ``days`` days (``days`` x bars per day closes, the last one included), else
    that share in cash; decided at every decision, so a coin held stays at 1/N.

    A coin without ``days`` of closes yet (warm-up instants count) is not held. Reads the bars
    of ``timeframe`` only.
    """

    def __init__(self, coins: Sequence[str], timeframe: str, days: int = 20) -> None:
        if days < 1:
            raise ValueError(f"trend filter days must be >= 1, got {days}")
        self.name = TREND_FILTER
        self.coins, self.timeframe = tuple(coins), timeframe
        self.length = bars_in_days(days, timeframe)
        self._closes: dict[str, deque[float]] = {c: deque(maxlen=self.length) for c in coins}

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        """Remember the instant's closes; the weights when deciding."""
        for bar in context.instant.bars:
            closes = self._closes.get(bar.symbol.split("/")[0])
            if closes is not None and bar.timeframe == self.timeframe:
                closes.append(float(bar.close))
        return self.weights() if context.deciding else None

    def holds(self, coin: str) -> bool:
        """Whether ``coin``'s last close is above its mean over the window (a full window)."""
        closes = self._closes[coin]
        return len(closes) == self.length and closes[-1] > sum(closes) / self.length

    def weights(self) -> dict[str, float]:
        """The target weights now: 1/N per coin in an up-trend (the rest is cash)."""
        share = 1.0 / len(self.coins) if self.coins else 0.0
        return {c: share for c in self.coins if self.holds(c)}


def baselines(
    coins: Sequence[str], timeframe: str | None = None, trend_days: int = 20
) -> list[FixedWeights | TrendFilter]:
    """Every baseline of a portfolio: buy & hold of each coin, both equal-weight ones, and the
    trend filter (when ``timeframe`` is given)."""
    return [
        *(BuyAndHold(c) for c in coins),
        EqualWeightRebalanced(coins),
        EqualWeightBuyAndHold(coins),
        *([TrendFilter(coins, timeframe, trend_days)] if timeframe else []),
    ]
