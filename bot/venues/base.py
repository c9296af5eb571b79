"""The one Venue protocol: where orders go, and what a venue answers.

Two venues implement it: :class:`bot.venues.sim.SimVenue` (the fill model of backtests and of
paper trading: next-open fills, slippage, fees, filters, one affordability rule) and
:class:`bot.venues.ccxt.CcxtVenue` (the exchange through ccxt). The journal wraps either
(:class:`bot.live.executor.Executor`): planning, write-ahead records, settling orders of unknown
fate and reconciliation are the same code whatever the venue, with no ``isinstance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from bot.events import SubmitOrder
from bot.venues.orders import OrderOutcome

ABSENT: Final = "absent"
"""A lookup's answer when the venue's record has no such order."""


class LiveTradingError(RuntimeError):
    """A failure no order can be traded through: the venue refused the API key."""


@dataclass(frozen=True)
class NotSent:
    """The request was refused before the venue acted on it (rate limit, ban): not placed."""

    reason: str


@dataclass(frozen=True)
class Uncertain:
    """The request may have reached the venue and nobody can say what happened."""

    reason: str


@dataclass(frozen=True)
class Unreachable:
    """The venue could not be asked (``reason``)."""

    reason: str


@dataclass(frozen=True)
class OpenOrder:
    """An order resting on the venue's book."""

    client_order_id: str
    symbol: str
    exchange_order_id: str | None


Placement = OrderOutcome | NotSent | Uncertain
"""What sending an order led to."""
Record = OrderOutcome | str | Unreachable
"""A lookup's answer: the order's state, :data:`ABSENT`, or :class:`Unreachable`."""


class Venue(Protocol):
    """Submit, look up, balances, open orders: what the journal needs of a venue."""

    name: str
    """``"exchange"`` or ``"paper"`` (the daemon's mode)."""
    horizon_ms: int
    """An order the venue has no record of this long after it was sent never arrived (0: the
    venue's answer is final at once)."""

    def shape(self, order: SubmitOrder) -> SubmitOrder:
        """The order as this venue sends it (a limit order where configured)."""
        ...

    async def submit(self, order: SubmitOrder) -> Placement:
        """Place ``order`` and follow it until it settles."""
        ...

    async def lookup(self, order: SubmitOrder, since_ms: int | None = None) -> Record:
        """The venue's own record of ``order`` (by client id, then its list since
        ``since_ms``)."""
        ...

    async def balances(self, coins: tuple[str, ...], quote: str) -> dict[str, float]:
        """Total balance per asset."""
        ...

    async def cancel(self, order: SubmitOrder, last: OrderOutcome | None = None) -> OrderOutcome:
        """Cancel an open order; its final state (it may have filled meanwhile)."""
        ...

    async def open_orders(self, coins: tuple[str, ...], quote: str) -> list[OpenOrder]:
        """Orders resting on the book for ``coins``."""
        ...

    async def cancel_open(self, order: OpenOrder) -> None:
        """Cancel a resting order the journal does not know."""
        ...

    async def clock_ms(self, estimate_ms: int) -> int:
        """The venue's own clock (an order is proven never received only on it); 0 when it
        cannot be read, so nothing is concluded from a guess."""
        ...
