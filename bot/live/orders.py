"""What an exchange said about an order, in the journal's words, and exchange filters from ccxt.

:class:`OrderOutcome` is the one shape both live executors hand to the journal: the ccxt one
builds it from ccxt's unified order (:func:`outcome_from_ccxt`), the paper one from its
simulated fill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.engine.rules import MarketRules

_CCXT_STATUS = {
    "closed": "filled",
    "canceled": "canceled",
    "cancelled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
}


@dataclass(frozen=True)
class OrderOutcome:
    """An order's state on the exchange (or the paper book)."""

    status: str
    """open | partially_filled | filled | canceled | expired | rejected"""
    filled: float = 0.0
    average_price: float | None = None
    fee: float = 0.0
    fee_asset: str | None = None
    exchange_order_id: str | None = None
    reason: str | None = None

    @property
    def settled(self) -> bool:
        """Whether nothing more will happen to the order."""
        return self.status not in ("open", "partially_filled")


def outcome_from_ccxt(order: Mapping[str, Any], base: str, quote: str) -> OrderOutcome:
    """The journal's view of a ccxt unified order (``create_order`` / ``fetch_order``).

    Fees are summed per asset; when they were charged in several assets (a BNB discount, say),
    the one in ``base`` or ``quote`` is kept and the others are ignored with the account's next
    reconciliation catching up.
    """
    filled = float(order.get("filled") or 0.0)
    raw = str(order.get("status") or "open")
    status = _CCXT_STATUS.get(raw, "open")
    if status == "open" and filled > 0:
        status = "partially_filled"
    fees: dict[str, float] = {}
    for fee in order.get("fees") or ([order["fee"]] if order.get("fee") else []):
        if fee and fee.get("cost") is not None and fee.get("currency"):
            fees[fee["currency"]] = fees.get(fee["currency"], 0.0) + float(fee["cost"])
    fee_asset = next((a for a in (base, quote) if a in fees), next(iter(fees), None))
    average = order.get("average")
    if average is None and filled > 0 and order.get("cost"):
        average = float(order["cost"]) / filled
    return OrderOutcome(
        status=status,
        filled=filled,
        average_price=None if average is None else float(average),
        fee=fees.get(fee_asset, 0.0) if fee_asset else 0.0,
        fee_asset=fee_asset,
        exchange_order_id=None if order.get("id") is None else str(order["id"]),
    )


def rules_from_markets(
    markets: Mapping[str, Mapping[str, Any]], coins: Sequence[str], quote: str
) -> dict[str, MarketRules]:
    """Each coin's lot, tick and minimum notional as the exchange lists them.

    ccxt's Binance precision mode is ``TICK_SIZE``: ``precision.amount`` is the LOT_SIZE step and
    ``precision.price`` the PRICE_FILTER tick; ``limits.cost.min`` is the NOTIONAL minimum.
    Raises ``KeyError`` naming a coin the exchange does not list.
    """
    rules = {}
    for coin in coins:
        symbol = f"{coin}/{quote}"
        market = markets.get(symbol)
        if market is None:
            raise KeyError(f"the exchange lists no market {symbol}")
        precision = market.get("precision") or {}
        cost = (market.get("limits") or {}).get("cost") or {}
        rules[coin] = MarketRules(
            step_size=float(precision.get("amount") or 1e-8),
            tick_size=float(precision.get("price") or 1e-8),
            min_notional=float(cost.get("min") or 0.0),
        )
    return rules
