"""Baseline policies, run through the same engine as the Crypto Modules.

* :class:`BuyAndHold` - all equity into one coin at the first decision, never traded again;
* :class:`EqualWeightRebalanced` - 1/N in every coin, rebalanced at every decision (CRP);
* :class:`EqualWeightBuyAndHold` - 1/N in every coin at the first decision, then left to drift;
* :class:`TrendFilter` - each coin held (1/N of equity) while its close is above its mean over
  the last ``days`` days, else that share in cash; what many users would run instead of a
  learned policy.

Each answers ``BarsClosed`` with ``TargetWeights`` like any policy; the risk gate, the planner,
the broker's fees, slippage and filters apply to them exactly as to the strategy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from bot.bus import EventBus
from bot.events import Bar, BarsClosed, Event, TargetWeights
from bot.timeframes import DAY_MS, timeframe_ms

TREND_FILTER = "trend_filter"


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


class TrendFilter:
    """Each coin held with 1/N of equity while its last close is above the mean of its closes
    over the last ``days`` days (``days`` x bars per day closes, the last one included), else
    that share in cash; decided at every ``BarsClosed``, so a coin held stays at 1/N.

    A coin without ``days`` of closes yet (the warm-up bars the replay publishes before the
    first decision count) is not held. Reads the ``Bar`` events of ``timeframe`` only.
    """

    def __init__(self, coins: Sequence[str], quote: str, timeframe: str, days: int = 20) -> None:
        if days < 1:
            raise ValueError(f"trend filter days must be >= 1, got {days}")
        self.name = TREND_FILTER
        self.coins, self.quote, self.timeframe = tuple(coins), quote, timeframe
        self.length = max(1, round(days * DAY_MS / timeframe_ms(timeframe)))
        self._closes: dict[str, deque[float]] = {c: deque(maxlen=self.length) for c in coins}
        self._sums = dict.fromkeys(self.coins, 0.0)
        self._emit: Callable[[Event], None] = lambda event: None

    def attach(self, bus: EventBus) -> None:
        """Read bars, decide at every ``BarsClosed``."""
        self._emit = bus.emit
        bus.subscribe(Bar, self.on_bar)
        bus.subscribe(BarsClosed, self.on_bars_closed)

    def on_bar(self, bar: Bar) -> None:
        """Remember the close of a bar of one of the coins."""
        coin = bar.symbol.split("/")[0]
        closes = self._closes.get(coin)
        if closes is None or bar.timeframe != self.timeframe:
            return
        closes.append(float(bar.close))

    def holds(self, coin: str) -> bool:
        """Whether ``coin``'s last close is above its mean over the window (a full window)."""
        closes = self._closes[coin]
        return len(closes) == self.length and closes[-1] > sum(closes) / self.length

    def weights(self) -> tuple[tuple[str, float], ...]:
        """The target weights now: 1/N per coin in an up-trend, the rest in cash."""
        share = 1.0 / len(self.coins) if self.coins else 0.0
        held = {c: share for c in self.coins if self.holds(c)}
        return tuple(sorted({**held, self.quote: 1.0 - sum(held.values())}.items()))

    def on_bars_closed(self, event: BarsClosed) -> None:
        """Emit the weights."""
        self._emit(TargetWeights(event.ts, self.weights(), self.name))


def baselines(
    coins: Sequence[str], quote: str, timeframe: str | None = None, trend_days: int = 20
) -> list[_WeightsPolicy | TrendFilter]:
    """Every baseline of a portfolio: buy & hold of each coin, both equal-weight ones, and the
    trend filter (when ``timeframe`` is given)."""
    return [
        *(BuyAndHold(c, quote) for c in coins),
        EqualWeightRebalanced(coins, quote),
        EqualWeightBuyAndHold(coins, quote),
        *([TrendFilter(coins, quote, timeframe, trend_days)] if timeframe else []),
    ]
