"""The journalled executor: any venue's orders, write-ahead in ``state.db``.

The :class:`Executor` wraps a :class:`~bot.venues.base.Venue` (the exchange, or the simulated
venue of paper trading) with the journal. A cycle's orders (the engine step's plan) are
journalled whole (one transaction), sent in plan order, sells before buys, each marked
``sending`` before its request leaves, and the uncertain ones are settled. Fills reach the engine
through ``on_fill`` (once: the journal counts what was booked), refusals through ``on_reject``.

The one rule of the order path: **an order whose outcome is unknown is never sent again until
the venue's own record says what happened.** Such an order is journalled ``unknown``, blocks
new orders for its coin, and is looked up again (:meth:`Executor.resolve`) at the end of its
cycle, at every later cycle and at every start, with backoff, until the venue either shows it
(its fill is booked) or proves it never received it: no record of it once the venue's
``horizon_ms`` has passed since the request was signed, read on the venue's own clock (for the
exchange, ``recvWindow`` plus ``unknown_settle_s``: a request the exchange has not received by
then is refused when it arrives). Only then may the same intent be sent, and only while its
cycle is current; otherwise it is abandoned and the next decision starts from the real balances.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from bot.engine.execution import Slicer
from bot.engine.planner import CLIENT_ID_PREFIX
from bot.events import OrderFilled, OrderRejected, SubmitOrder
from bot.feed.retry import backoff_delay
from bot.store.journal import Journal, JournalOrder
from bot.venues.base import ABSENT, LiveTradingError, NotSent, Uncertain, Unreachable, Venue
from bot.venues.orders import OrderOutcome

log = logging.getLogger(__name__)

__all__ = ["ABSENT", "SETTLED", "UNKNOWN", "Executor", "LiveTradingError", "paper_balances"]

SETTLED, UNKNOWN = "settled", "unknown"
"""What :meth:`Executor.resolve` learnt besides ``ABSENT``: the venue showed the order (its
state is journalled), or cannot say yet (the order stays ``unknown``)."""
MAX_CHECK_INTERVAL_MS = 15 * 60_000
"""Longest wait between two lookups of an order of unknown fate."""


class Executor:
    """A venue's orders through the journal (see the module docstring)."""

    def __init__(self, venue: Venue, journal: Journal, now_ms: Callable[[], int]) -> None:
        self.venue = venue
        self.mode = venue.name
        self.journal = journal
        self.now_ms = now_ms
        self.on_fill: Callable[[OrderFilled], None] = lambda fill: None
        """Where fills go (the engine's ``book``)."""
        self.on_reject: Callable[[OrderRejected], None] = lambda rejection: None
        """Where refusals go (the engine's ``reject``)."""
        self.needs_reconcile = False
        self.slicer: Slicer | None = None
        """Splits large orders into slices sent over the interval (``[execution]``)."""
        """Set when an order's fate was uncertain: balances are re-read after the cycle."""
        self.wait_until: Callable[[int], Awaitable[bool]] | None = None
        """Sleeps until an exchange time (False when the daemon stops); settling waits on it."""
        self.on_incident: Callable[[str], None] = lambda text: None
        """Told once about each order whose fate became unknown, and about its resolution."""

    # -- one cycle ------------------------------------------------------------------------------

    async def execute_cycle(
        self, ts: int, orders: Sequence[SubmitOrder], *, deadline_ms: int | None = None
    ) -> int:
        """Journal ``orders`` (the step's plan at ``ts``; large ones as slices when a slicer
        is set) and run the plan (:meth:`run_plan`). Returns the number of orders journalled.
        A resumed cycle (restart) keeps the plan journalled the first time and sends only what
        was never sent."""
        shaped: list[SubmitOrder] = []
        send_at: dict[str, int] = {}
        for order in orders:
            parts = self.slicer.slices(order) if self.slicer is not None else [(order, 0)]
            for part, offset in parts:
                shaped.append(self.venue.shape(part))
                if offset:
                    send_at[part.client_order_id] = ts + offset
        await self.journal.plan_cycle(ts, shaped, self.now_ms(), send_at)
        return await self.run_plan(ts, deadline_ms=deadline_ms)

    async def run_plan(self, ts: int, *, deadline_ms: int | None = None) -> int:
        """Send the cycle's ``planned`` orders, sells then buys, each side's uncertain orders
        settled (until ``deadline_ms``, exchange time) before the next side; then abandon what
        could not be sent. Slices go at their times: at each time, its sells then its buys."""
        plan = await self.journal.cycle_orders(ts)
        times = sorted({r.send_at_ms or 0 for r in plan})
        for when in times:
            if when and self.wait_until is not None and not await self.wait_until(when):
                break  # stopping: what is left is abandoned below
            # Sells first, settled before the buys their proceeds pay for are sent.
            for side in ("sell", "buy"):
                rows = [
                    r
                    for r in await self.journal.cycle_orders(ts)
                    if r.side == side and (r.send_at_ms or 0) == when
                ]
                await self.send_planned(rows)
                if deadline_ms is not None and len(times) == 1:
                    await self.settle(ts, deadline_ms)
        if deadline_ms is not None and len(times) > 1:
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
            placed = await self.venue.submit(row.submit_order())
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

    # -- the venue's record -----------------------------------------------------------------------

    async def resolve(self, row: JournalOrder, now_ms: int, *, first_reason: str = "") -> str:
        """Ask the venue's record about ``row`` (sent, fate not settled): ``SETTLED`` (its state
        is journalled and booked), ``ABSENT`` (provably never received; the caller decides) or
        ``UNKNOWN`` (journalled ``unknown`` with its next check, with backoff)."""
        venue = self.venue
        order = row.submit_order()
        sent = row.sent_ms if row.sent_ms is not None else now_ms
        record = await venue.lookup(order, max(0, sent - 60_000))
        if isinstance(record, OrderOutcome):
            await self.apply(row, record)
            if row.status == "unknown":
                text = (
                    f"order {row.client_order_id} resolved from the venue's record: "
                    f"{record.status}, {record.filled:.8g} of {row.amount:.8g} {row.symbol}"
                )
                log.warning("%s", text)
                self.on_incident(text)
            return SETTLED
        horizon = sent + venue.horizon_ms
        if record == ABSENT and now_ms >= horizon and await venue.clock_ms(now_ms) >= horizon:
            if venue.horizon_ms:
                log.warning(
                    "order %s: the venue has no record of it %.0f s after it was sent: it never "
                    "arrived",
                    row.client_order_id,
                    (now_ms - sent) / 1000,
                )
            return ABSENT
        checks = row.checks + 1
        backoff = now_ms + min(MAX_CHECK_INTERVAL_MS, int(1000 * backoff_delay(checks, 1.0)))
        if isinstance(record, Unreachable):
            self.needs_reconcile = True
            reason = f"the venue cannot say: {record.reason}"
            next_check = backoff
        else:
            reason = "no record on the venue yet"
            first = now_ms + min(venue.horizon_ms, 10_000)
            next_check = horizon if row.status == "unknown" else min(first, horizon)
            if now_ms >= horizon:  # past it, but the venue's clock could not confirm it
                next_check = backoff
        if first_reason:
            reason = f"{first_reason}; {reason}"
        await self.journal.mark_unknown(
            row.client_order_id, now_ms, next_check_ms=next_check, checks=checks, reason=reason
        )
        if row.status != "unknown":
            text = (
                f"order {row.client_order_id} ({row.side} {row.amount:.8g} {row.symbol}): fate "
                f"unknown ({reason}); not resent, {row.coin} blocked until the venue's record "
                "settles it"
            )
            log.error("%s", text)
            self.on_incident(text)
        return UNKNOWN

    async def cancel_strays(self, coins: tuple[str, ...], quote: str) -> list[str]:
        """Cancel open orders of ours (``rlpm-``) the journal does not know; leave anyone
        else's. Returns the client ids cancelled."""
        cancelled = []
        for order in await self.venue.open_orders(coins, quote):
            cid = order.client_order_id
            if await self.journal.order(cid) is not None:
                continue
            if not cid.startswith(CLIENT_ID_PREFIX):
                log.warning(
                    "open %s order %s was not placed by this daemon; left alone",
                    order.symbol,
                    cid or order.exchange_order_id,
                )
                continue
            try:
                await self.venue.cancel_open(order)
            except LiveTradingError:
                raise
            except Exception as exc:
                log.error("cannot cancel stray order %s: %s", cid, exc)
                continue
            cancelled.append(cid)
            log.warning("cancelled open order %s that state.db does not know", cid)
        return cancelled

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
            self.on_fill(fill)
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
        elif outcome.status == "rejected":
            log.warning(
                "order %s %s %.8g %s rejected: %s",
                cid,
                row.side,
                row.amount,
                row.symbol,
                outcome.reason,
            )
            self.on_reject(
                OrderRejected(now, cid, row.symbol, row.side, row.amount, outcome.reason or "")
            )


def paper_balances(initial_cash: float, quote: str, orders: list[JournalOrder]) -> dict[str, float]:
    """Paper balances derived from the journal: the initial cash plus every journalled fill."""
    balances = {quote: float(initial_cash)}
    for o in orders:
        if o.filled <= 0 or not o.average_price:
            continue
        coin = o.coin
        sign = 1.0 if o.side == "buy" else -1.0
        balances[coin] = balances.get(coin, 0.0) + sign * o.filled
        balances[quote] -= sign * o.filled * o.average_price
        if o.fee_asset == quote:
            balances[quote] -= o.fee
        elif o.fee_asset == coin:
            balances[coin] -= o.fee
    return balances
