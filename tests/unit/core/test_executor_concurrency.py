"""Independent coins' orders go out concurrently, without loosening the order path's rules.

A venue double holds orders in flight on explicit events (no time), and reads the journal at
each request: every order is journalled ``sending`` before its request leaves, a coin's own
orders never overlap, other coins' do, and a failing chain stops the rest from sending more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.events import SubmitOrder
from bot.live.executor import Executor
from bot.store.journal import Journal
from bot.venues.base import LiveTradingError, Placement
from bot.venues.orders import OrderOutcome

TS = 1_709_251_200_000


def order(coin: str, n: int) -> SubmitOrder:
    return SubmitOrder(
        TS, f"rlpm-{TS}-{coin}-b{n}", f"{coin}/USDT", "buy", 1.0, "market", None, 10.0
    )


class HeldVenue:
    """Answers every order filled; orders listed in ``held`` wait until ``release`` is set.
    ``fail`` names an order answered with a :class:`LiveTradingError`."""

    name = "exchange"
    horizon_ms = 0

    def __init__(self, journal: Journal, held: set[str], fail: str | None = None) -> None:
        self.journal = journal
        self.held = held
        self.fail = fail
        self.release = asyncio.Event()
        self.in_flight: set[str] = set()
        self.seen_together: set[frozenset[str]] = set()
        self.sent: list[tuple[str, str]] = []  # (client id, its journal status when sent)
        self.changed = asyncio.Event()

    def shape(self, order: SubmitOrder) -> SubmitOrder:
        return order

    async def submit(self, order: SubmitOrder) -> Placement:
        row = await self.journal.order(order.client_order_id)
        assert row is not None
        self.sent.append((order.client_order_id, row.status))
        coin = order.symbol.split("/")[0]
        assert not any(cid.split("-")[2] == coin for cid in self.in_flight), "a coin overlapped"
        self.in_flight.add(order.client_order_id)
        self.seen_together.add(frozenset(self.in_flight))
        self.changed.set()
        try:
            if order.client_order_id == self.fail:
                raise LiveTradingError("the exchange refused the API key")
            if order.client_order_id in self.held:
                await self.release.wait()
            return OrderOutcome("filled", 1.0, 10.0, exchange_order_id=order.client_order_id)
        finally:
            self.in_flight.discard(order.client_order_id)

    async def wait_in_flight(self, wanted: set[str]) -> None:
        while not wanted <= self.in_flight:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = await Journal.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def test_independent_coins_orders_are_in_flight_together_each_journalled_first(
    journal: Journal,
) -> None:
    plan = [order("BTC", 1), order("ETH", 1), order("LINK", 1), order("ETH", 2)]
    venue = HeldVenue(journal, held={plan[1].client_order_id, plan[2].client_order_id})
    executor = Executor(venue, journal, lambda: TS + 1_000)
    run = asyncio.create_task(executor.execute_cycle(TS, plan))
    both = {plan[1].client_order_id, plan[2].client_order_id}
    await asyncio.wait_for(venue.wait_in_flight(both), 10)  # ETH and LINK at once
    assert plan[3].client_order_id not in [cid for cid, _ in venue.sent]  # ETH's next waits
    venue.release.set()
    assert await asyncio.wait_for(run, 10) == 4

    # The first order went alone; every request left with its row already 'sending'.
    assert venue.sent[0] == (plan[0].client_order_id, "sending")
    assert {status for _, status in venue.sent} == {"sending"}
    assert [cid for cid, _ in venue.sent if "ETH" in cid] == [
        plan[1].client_order_id,
        plan[3].client_order_id,
    ]
    assert frozenset(both) in venue.seen_together
    assert {o.status for o in await journal.cycle_orders(TS)} == {"filled"}


async def test_a_failing_coin_stops_the_others_from_sending_more_and_is_raised(
    journal: Journal,
) -> None:
    plan = [order("BTC", 1), order("ETH", 1), order("LINK", 1), order("ETH", 2)]
    venue = HeldVenue(journal, held={plan[1].client_order_id}, fail=plan[2].client_order_id)
    executor = Executor(venue, journal, lambda: TS + 1_000)
    run = asyncio.create_task(executor.execute_cycle(TS, plan))
    await asyncio.wait_for(venue.wait_in_flight({plan[1].client_order_id}), 10)
    while plan[2].client_order_id not in [cid for cid, _ in venue.sent]:
        venue.changed.clear()
        await asyncio.wait_for(venue.changed.wait(), 10)
    venue.release.set()  # ETH's first order, in flight when LINK failed, finishes
    with pytest.raises(LiveTradingError):
        await asyncio.wait_for(run, 10)
    sent = [cid for cid, _ in venue.sent]
    assert plan[3].client_order_id not in sent  # nothing more left after the failure
    rows = {o.client_order_id: o.status for o in await journal.cycle_orders(TS)}
    assert rows[plan[1].client_order_id] == "filled"  # the in-flight answer is booked
    assert rows[plan[2].client_order_id] == "sending"  # fate to be settled, never resent blind
    assert rows[plan[3].client_order_id] == "planned"
