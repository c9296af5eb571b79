"""Exchange filters of a market: lot size, tick size, minimum notional, largest market order.

Amounts are rounded *down* to the lot (never trade more than intended); an order whose value is
below the minimum notional is not sent (the exchange would reject it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MarketRules:
    """Filters of one market. ``step_size``: lot; ``tick_size``: price step; quote minimum."""

    step_size: float = 1e-8
    tick_size: float = 1e-8
    min_notional: float = 5.0
    max_market_amount: float = math.inf
    """Largest amount of one market order (Binance's MARKET_LOT_SIZE ``maxQty``)."""

    def round_amount(self, amount: float) -> float:
        """``amount`` rounded down to a multiple of the lot size (0 when below one lot)."""
        if amount <= 0:
            return 0.0
        # The epsilon absorbs binary noise such as 0.3 / 0.1 = 2.9999999999999996.
        lots = math.floor(amount / self.step_size + 1e-9)
        return _clean(lots * self.step_size, self.step_size)

    def round_price(self, price: float) -> float:
        """``price`` rounded to the nearest tick."""
        return _clean(round(price / self.tick_size) * self.tick_size, self.tick_size)

    def tradable(self, amount: float, price: float) -> bool:
        """Whether an order of ``amount`` at ``price`` passes the lot and notional filters."""
        return amount > 0 and amount * price >= self.min_notional


@functools.lru_cache(maxsize=256)
def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step)) + 1)


def _clean(value: float, step: float) -> float:
    return round(value, _decimals(step))


DEFAULT_RULES = MarketRules()
"""The filters of a market nobody configured (shared: rules are immutable)."""
