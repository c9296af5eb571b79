"""Live executors: the engine's ``SubmitOrder`` commands, journalled, then sent or simulated.

Both executors follow the engine's ``Executor`` protocol (``attach(bus)``) and the same cycle:
the orders the planner emits while a decision is dispatched are collected, then
:meth:`LiveExecutor.execute_cycle` journals the whole plan in ``state.db`` (one transaction),
sends the orders one by one in plan order (sells first), marking each ``sending`` before its
request leaves, and settles what stayed uncertain. Fills reach the engine as ``OrderFilled``
(once: the journal counts what was booked) and refusals as ``OrderRejected``.

The one rule of the order path: **an order whose outcome is unknown is never sent again until
the exchange's own record says what happened.** Such an order is journalled ``unknown``, blocks
new orders for its coin, and is looked up again (:meth:`LiveExecutor.resolve`) at the end of
its cycle, at every later cycle and at every start, with backoff, until the exchange either
shows it (its fill is booked) or proves it never received it: no record of it once
``recvWindow`` plus ``unknown_settle_s`` have passed since the request was signed (a request
the exchange has not received by then is refused when it arrives). Only then may the same
intent be sent, and only while its cycle is current; otherwise it is abandoned and the next
decision starts from the real balances.

* :class:`bot.live.ccxt_executor.CcxtExecutor` trades on the exchange through ccxt.
* :class:`PaperExecutor` fills at the live price (the close just published) with the configured
  slippage, fee and the exchange's filters; its balances are derived from the journal, so they
  are exactly as crash-safe as the orders.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.bus import EventBus
from bot.engine.account import Account, coin_of
from bot.engine.rules import MarketRules
from bot.events import OrderFilled, OrderRejected, SubmitOrder
from bot.live.journal import Journal, JournalOrder
from bot.live.orders import OrderOutcome
from config.schema import BrokerConfig

log = logging.getLogger(__name__)

SETTLED, ABSENT, UNKNOWN = "settled", "absent", "unknown"
"""What :meth:`LiveExecutor.resolve` learnt: the exchange showed the order (its state is
journalled), proved it never received it, or cannot say yet (the order stays ``unknown``)."""


class LiveTradingError(RuntimeError):
    """A failure the daemon cannot trade through: the exchange refused the API key."""


@dataclass(frozen=True)
class NotSent:
    """The request was refused before the exchange acted on it (rate limit, ban): not placed."""

    reason: str


@dataclass(frozen=True)
class Uncertain:
    """The request may have reached the exchange and nobody can say what happened."""

    reason: str


Placement = OrderOutcome | NotSent | Uncertain


class LiveExecutor:
    """Collects a decision's orders, journals them, sends them, books the outcomes."""

    mode = "live"

    def __init__(self, journal: Journal, now_ms: Callable[[], int]) -> None:
        self.journal = journal
        self.now_ms = now_ms
        self._pending: list[SubmitOrder] = []
        self._bus: EventBus | None = None
        self.needs_reconcile = False
        """Set when an order's fate was uncertain: balances are re-read after the cycle."""
        self.wait_until: Callable[[int], Awaitable[bool]] | None = None
        """Sleeps until an exchange time (False when the daemon stops); settling waits on it."""
        self.exchange_now: Callable[[], Awaitable[int]] | None = None
        """Reads the exchange's own clock: an order is proven never received only on it."""
        self.on_incident: Callable[[str], None] = lambda text: None
        """Told once about each order whose fate became unknown, and about its resolution."""

    def attach(self, bus: EventBus) -> None:
        """Collect ``SubmitOrder`` from ``bus``; fills and rejections are published on it."""
        self._bus = bus
        bus.subscribe(SubmitOrder, self._pending.append)

    def discard_pending(self) -> list[SubmitOrder]:
        """Drop the collected orders (a cycle that must not trade) and return them."""
        pending, self._pending[:] = list(self._pending), []
        return pending

    # -- one cycle ------------------------------------------------------------------------------

    async def execute_cycle(self, ts: int, *, deadline_ms: int | None = None) -> int:
        """Journal the orders collected for the decision at ``ts`` and run the plan
        (:meth:`run_plan`). Returns the number of orders of the cycle's plan. A resumed cycle
        (restart) keeps the plan journalled the first time and sends only what was never
        sent."""
        orders = [self.shape(order) for order in self.discard_pending()]
        await self.journal.plan_cycle(ts, orders, self.now_ms())
        return await self.run_plan(ts, deadline_ms=deadline_ms)

    async def run_plan(self, ts: int, *, deadline_ms: int | None = None) -> int:
        """Send the cycle's ``planned`` orders, sells then buys, each side's uncertain orders
        settled (until ``deadline_ms``, exchange time) before the next side; then abandon what
        could not be sent."""
        plan = await self.journal.cycle_orders(ts)
        # Sells first, settled before the buys their proceeds pay for are sent.
        for side in ("sell", "buy"):
            rows = [r for r in await self.journal.cycle_orders(ts) if r.side == side]
            await self.send_planned(rows)
            if deadline_ms is not None:
                await self.settle(ts, deadline_ms)
        await self.abandon_unsent(ts, "not sent during its cycle")
        return len(plan)

    async def send_planned(self, rows: list[JournalOrder]) -> None:
        """Send every ``planned`` order of ``rows`` (in order) and book what happens.

        An order whose coin has an order of unknown fate from another cycle is not sent.
        """
        blocked = await self.blocked_coins()
        for row in rows:
            if row.status != "planned":
                continue
            if row.coin in blocked:
                await self.journal.record(
                    row.client_order_id, self.now_ms(), status="planned", reason=blocked[row.coin]
                )
                log.warning("order %s not sent: %s", row.client_order_id, blocked[row.coin])
                continue
            now = self.now_ms()
            await self.journal.mark_sending(row.client_order_id, now)
            row = await self._row(row.client_order_id)
            placed = await self.send(row.submit_order())
            if isinstance(placed, NotSent):
                await self.journal.record(
                    row.client_order_id, self.now_ms(), status="planned", reason=placed.reason
                )
                log.warning("order %s not placed: %s", row.client_order_id, placed.reason)
            elif isinstance(placed, Uncertain):
                self.needs_reconcile = True
                await self.resolve(row, self.now_ms(), first_reason=placed.reason)
            else:
                await self.apply(row, placed)

    async def settle(self, ts: int, deadline_ms: int) -> None:
        """Look the cycle's ``unknown`` orders up when due, until none is left or the next
        check lies past ``deadline_ms``; one the exchange proves it never received is sent
        again (its cycle is current)."""
        if self.wait_until is None:
            return
        while True:
            rows = [r for r in await self.journal.cycle_orders(ts) if r.status == "unknown"]
            if not rows:
                return
            due = min(r.next_check_ms or 0 for r in rows)
            if due > deadline_ms or not await self.wait_until(due):
                return
            for row in rows:
                now = self.now_ms()
                if (row.next_check_ms or 0) > now:
                    continue
                if await self.resolve(row, now) == ABSENT:
                    await self.journal.record(
                        row.client_order_id,
                        now,
                        status="planned",
                        reason="the exchange has no record of it: sent again",
                    )
                    await self.send_planned([await self._row(row.client_order_id)])

    async def check_unknown(self, now_ms: int) -> dict[str, str]:
        """Look up the ``unknown`` orders that are due (their cycles are over: one the exchange
        never received is abandoned). Returns the coins still blocked -> why."""
        for row in await self.journal.unknown_orders():
            if (row.next_check_ms or 0) <= now_ms and await self.resolve(row, now_ms) == ABSENT:
                await self.journal.record(
                    row.client_order_id,
                    now_ms,
                    status="abandoned",
                    reason="the exchange never received it; its cycle is over",
                )
                self.on_incident(
                    f"order {row.client_order_id} ({row.side} {row.amount:.8g} {row.symbol}) "
                    "never reached the exchange; its coin trades again"
                )
        return await self.blocked_coins()

    async def blocked_coins(self) -> dict[str, str]:
        """Coins with an order of unknown fate -> why no new order may be sent for them."""
        blocked: dict[str, str] = {}
        for row in await self.journal.unknown_orders():
            blocked.setdefault(
                row.coin,
                f"order {row.client_order_id} ({row.side} {row.amount:.8g}) is of unknown fate; "
                f"{row.coin} trades again once the exchange's record settles it",
            )
        return blocked

    async def abandon_unsent(self, ts: int, reason: str) -> None:
        """Mark the cycle's orders still ``planned`` as abandoned (never sent)."""
        for row in await self.journal.cycle_orders(ts):
            if row.status == "planned":
                await self.journal.record(
                    row.client_order_id,
                    self.now_ms(),
                    status="abandoned",
                    reason=f"{reason}: {row.reason}" if row.reason else reason,
                )

    async def _row(self, client_order_id: str) -> JournalOrder:
        row = await self.journal.order(client_order_id)
        if row is None:  # pragma: no cover - the journal holds every order it planned
            raise KeyError(client_order_id)
        return row

    # -- what each venue does ---------------------------------------------------------------------

    def shape(self, order: SubmitOrder) -> SubmitOrder:
        """The order as this venue sends it (journalled so): the planner's market order, or a
        limit order when the venue is configured so."""
        return order

    async def send(self, order: SubmitOrder) -> Placement:
        """Place ``order`` and follow it until it settles."""
        raise NotImplementedError

    async def resolve(self, row: JournalOrder, now_ms: int, *, first_reason: str = "") -> str:
        """Ask the exchange's record about ``row`` (sent, of unknown fate): ``SETTLED`` (its
        state is journalled and booked), ``ABSENT`` (provably never received; the caller
        decides) or ``UNKNOWN`` (journalled ``unknown`` with its next check)."""
        raise NotImplementedError

    async def balances(self, coins: tuple[str, ...], quote: str, initial_cash: float) -> dict:
        """Total balance per asset (``quote`` and ``coins``) as the venue holds it."""
        raise NotImplementedError

    async def cancel(self, order: SubmitOrder, last: OrderOutcome | None = None) -> OrderOutcome:
        """Cancel an open order; its final state (it may have filled meanwhile)."""
        raise NotImplementedError

    async def cancel_strays(self, coins: tuple[str, ...], quote: str) -> list[str]:
        """Cancel open orders of ours the journal does not know; their client ids."""
        return []

    # -- booking --------------------------------------------------------------------------------

    async def apply(self, row: JournalOrder, outcome: OrderOutcome) -> None:
        """Journal ``outcome``; publish what is new: a fill (its unbooked part) or a rejection."""
        cid, now = row.client_order_id, self.now_ms()
        new = outcome.filled - row.booked
        booking = new > 1e-15 and bool(outcome.average_price)
        # One commit holds the outcome and what is booked: a crash before the fill reaches the
        # account is harmless, since a restart rebuilds the account from the balances.
        await self.journal.record(
            cid,
            now,
            status=outcome.status,
            filled=outcome.filled,
            average_price=outcome.average_price,
            fee=outcome.fee,
            fee_asset=outcome.fee_asset,
            exchange_order_id=outcome.exchange_order_id,
            reason=outcome.reason,
            booked=outcome.filled if booking else None,
            fee_quote=outcome.fee_quote,
            fees=dict(outcome.fees) if outcome.fees else None,
        )
        bus = self._bus
        if booking:
            assert outcome.average_price is not None
            share = new / outcome.filled if outcome.filled else 0.0
            fill = OrderFilled(
                now,
                cid,
                row.symbol,
                row.side,
                new,
                outcome.average_price,
                outcome.fee * share,
                outcome.fee_asset or "",
                None if outcome.fee_quote is None else outcome.fee_quote * share,
            )
            if bus is not None:
                await bus.publish(fill)
            if outcome.status != "filled":
                log.warning(
                    "order %s %s %s: %s, %.8g of %.8g filled",
                    cid,
                    row.side,
                    row.symbol,
                    outcome.status,
                    outcome.filled,
                    row.amount,
                )
        elif outcome.status == "rejected" and bus is not None:
            log.warning(
                "order %s %s %.8g %s rejected: %s",
                cid,
                row.side,
                row.amount,
                row.symbol,
                outcome.reason,
            )
            await bus.publish(
                OrderRejected(now, cid, row.symbol, row.side, row.amount, outcome.reason or "")
            )


class PaperExecutor(LiveExecutor):
    """Simulated fills on live prices; nothing reaches the exchange and no key is needed.

    The fill price is the account's latest price of the coin (the close the decision saw)
    moved by ``slippage_bps`` against the order; fees are ``fee_rate`` in the quote currency;
    lots and minimum notional are those of the exchange. Balances come from the journal.
    """

    mode = "paper"

    def __init__(
        self,
        journal: Journal,
        now_ms: Callable[[], int],
        account: Account | None,
        broker: BrokerConfig,
        rules: Mapping[str, MarketRules],
    ) -> None:
        super().__init__(journal, now_ms)
        self.account = account
        self.fee_rate = broker.fee_rate
        self.slippage = broker.slippage_bps / 10_000
        self.rules = rules

    async def send(self, order: SubmitOrder) -> OrderOutcome:
        """The simulated fill (or rejection) of ``order`` against the account's balances."""
        coin = coin_of(order.symbol)
        if self.account is None:
            raise RuntimeError("PaperExecutor.account must be set before trading")
        price = self.account.prices.get(coin)
        if not price:
            return OrderOutcome("rejected", reason=f"no live price for {coin}")
        buy = order.side == "buy"
        price *= 1 + self.slippage if buy else 1 - self.slippage
        rules = self.rules.get(coin, MarketRules())
        amount = rules.round_amount(order.amount)
        if buy:
            affordable = rules.round_amount(self.account.cash / (price * (1 + self.fee_rate)))
            if amount > affordable:
                return OrderOutcome(
                    "rejected",
                    reason=f"insufficient balance: {amount:.8g} {coin} needs "
                    f"{amount * price * (1 + self.fee_rate):.2f} {self.account.quote}, "
                    f"{self.account.cash:.2f} free",
                )
        elif amount > self.account.holdings.get(coin, 0.0) + 1e-12:
            return OrderOutcome("rejected", reason=f"insufficient balance of {coin}")
        if not rules.tradable(amount, price):
            return OrderOutcome(
                "rejected",
                reason=f"notional {amount * price:.2f} below minimum {rules.min_notional:.2f}",
            )
        fee = amount * price * self.fee_rate
        return OrderOutcome(
            "filled",
            filled=amount,
            average_price=price,
            fee=fee,
            fee_asset=self.account.quote,
            exchange_order_id=f"paper-{order.client_order_id}",
            fees=((self.account.quote, fee),),
            fee_quote=fee,
        )

    async def resolve(self, row: JournalOrder, now_ms: int, *, first_reason: str = "") -> str:
        """A paper fill is journalled in the same step as its ``sending`` mark: a row still
        ``sending`` was never filled."""
        return ABSENT

    async def balances(self, coins: tuple[str, ...], quote: str, initial_cash: float) -> dict:
        """Derived from the journal: the initial cash plus every journalled fill."""
        return paper_balances(initial_cash, quote, await self.journal.orders())

    async def cancel(self, order: SubmitOrder, last: OrderOutcome | None = None) -> OrderOutcome:
        """Paper orders never rest on a book."""
        return last or OrderOutcome("canceled")


def paper_balances(initial_cash: float, quote: str, orders: list[JournalOrder]) -> dict[str, float]:
    """Paper balances derived from the journal: the initial cash plus every journalled fill."""
    balances = {quote: float(initial_cash)}
    for o in orders:
        if o.filled <= 0 or not o.average_price:
            continue
        coin = coin_of(o.symbol)
        sign = 1.0 if o.side == "buy" else -1.0
        balances[coin] = balances.get(coin, 0.0) + sign * o.filled
        balances[quote] -= sign * o.filled * o.average_price
        if o.fee_asset == quote:
            balances[quote] -= o.fee
        elif o.fee_asset == coin:
            balances[coin] -= o.fee
    return balances
