"""What an exchange said about an order, in the journal's words, and exchange filters from ccxt.

:class:`OrderOutcome` is the one shape both live executors hand to the journal: the ccxt one
builds it from ccxt's unified order (:func:`outcome_from_ccxt`), the paper one from its
simulated fill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
    """The commission in ``fee_asset`` (the asset most of it was paid in)."""
    fee_asset: str | None = None
    exchange_order_id: str | None = None
    reason: str | None = None
    fees: tuple[tuple[str, float], ...] = ()
    """Every commission of the fills, per asset (BNB included); empty when not known yet."""
    fee_quote: float | None = None
    """All commissions valued in the quote currency; ``None`` until valued."""

    @property
    def fees_known(self) -> bool:
        """Whether the commissions are known (nothing filled, or fills carried them)."""
        return self.filled <= 0 or bool(self.fees)

    def with_fees(self, fees: Mapping[str, float], fee_quote: float | None) -> OrderOutcome:
        """This outcome with its commissions (``fee``/``fee_asset``: the largest in value)."""
        fee_asset = max(fees, key=lambda a: fees[a]) if fees else self.fee_asset
        return replace(
            self,
            fee=fees.get(fee_asset, 0.0) if fee_asset else 0.0,
            fee_asset=fee_asset,
            fees=tuple(sorted(fees.items())),
            fee_quote=fee_quote,
        )

    @property
    def settled(self) -> bool:
        """Whether nothing more will happen to the order."""
        return self.status not in ("open", "partially_filled")


def outcome_from_ccxt(order: Mapping[str, Any], base: str, quote: str) -> OrderOutcome:
    """The journal's view of a ccxt unified order (``create_order`` / ``fetch_order``).

    Commissions are taken, per asset, from the fills of a FULL ``create_order`` answer (ccxt's
    ``fees``); a ``fetch_order`` answer has none (Binance's query-order carries no fills), and
    the outcome then says ``fees_known`` is false: the caller asks ``myTrades``
    (:func:`fees_from_trades`). The quote value is left to :meth:`OrderOutcome.with_fees`.
    """
    filled = float(order.get("filled") or 0.0)
    raw = str(order.get("status") or "open")
    status = _CCXT_STATUS.get(raw, "open")
    if status == "open" and filled > 0:
        status = "partially_filled"
    fees: dict[str, float] = {}
    trades = order.get("trades") or []
    if trades:  # the FULL answer's fills, one commission each
        for trade in trades:
            fee = trade.get("fee") or {}
            if fee.get("cost") is not None and fee.get("currency"):
                fees[fee["currency"]] = fees.get(fee["currency"], 0.0) + float(fee["cost"])
    average = order.get("average")
    if average is None and filled > 0 and order.get("cost"):
        average = float(order["cost"]) / filled
    outcome = OrderOutcome(
        status=status,
        filled=filled,
        average_price=None if average is None else float(average),
        exchange_order_id=None if order.get("id") is None else str(order["id"]),
    )
    return outcome.with_fees(fees, None) if fees else outcome


def fees_from_trades(trades: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Commission per asset over ccxt unified trades (``fetch_my_trades`` of one order)."""
    fees: dict[str, float] = {}
    for trade in trades:
        fee = trade.get("fee") or {}
        if fee.get("cost") is not None and fee.get("currency"):
            fees[fee["currency"]] = fees.get(fee["currency"], 0.0) + float(fee["cost"])
    return fees


def rules_from_markets(
    markets: Mapping[str, Mapping[str, Any]], coins: Sequence[str], quote: str
) -> dict[str, MarketRules]:
    """Each coin's lot, tick and minimum notional as the exchange lists them.

    ccxt's Binance precision mode is ``TICK_SIZE``: ``precision.amount`` is the LOT_SIZE step and
    ``precision.price`` the PRICE_FILTER tick; ``limits.cost.min`` is the NOTIONAL minimum and
    ``limits.market.max`` MARKET_LOT_SIZE's ``maxQty`` (0 or absent: no limit).
    Raises ``KeyError`` naming a coin the exchange does not list.
    """
    rules = {}
    for coin in coins:
        symbol = f"{coin}/{quote}"
        market = markets.get(symbol)
        if market is None:
            raise KeyError(f"the exchange lists no market {symbol}")
        precision = market.get("precision") or {}
        limits = market.get("limits") or {}
        cost = limits.get("cost") or {}
        market_max = float((limits.get("market") or {}).get("max") or 0.0)
        rules[coin] = MarketRules(
            step_size=float(precision.get("amount") or 1e-8),
            tick_size=float(precision.get("price") or 1e-8),
            min_notional=float(cost.get("min") or 0.0),
            max_market_amount=market_max if market_max > 0 else math.inf,
        )
    return rules
