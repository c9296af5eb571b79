"""Live executors: the engine's ``SubmitOrder`` commands, journalled, then sent or simulated.

Both executors follow the engine's ``Executor`` protocol (``attach(bus)``) and the same cycle:
the orders the planner emits while a decision is dispatched are collected, then
:meth:`LiveExecutor.execute_cycle` journals the whole plan in ``state.db`` (one transaction) and
sends the orders one by one in plan order (sells first), marking each ``sending`` before its
request leaves. Fills reach the engine as ``OrderFilled`` (once: the journal counts what was
booked) and refusals as ``OrderRejected``.

* :class:`CcxtExecutor` trades on the exchange through ccxt. Errors are sorted at the boundary:
  a refused request (HTTP 429/418, a stale timestamp) is resent after the wait the exchange asked
  for; a request whose fate is unknown (timeout, 5xx, dropped connection) is never blindly
  resent: the order is first looked up by its client id, and sent again only if the exchange
  does not know it; a rejection (minimum notional, insufficient balance) is final; an
  authentication failure stops the daemon with a clear message.
* :class:`PaperExecutor` fills at the live price (the close just published) with the configured
  slippage, fee and the exchange's filters; its balances are derived from the journal, so they
  are exactly as crash-safe as the orders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import ccxt

from bot.bus import EventBus
from bot.engine.account import Account, coin_of
from bot.engine.rules import MarketRules
from bot.events import OrderFilled, OrderRejected, SubmitOrder
from bot.feed.exchange import describe_error, is_temporary
from bot.feed.retry import backoff_delay, retry_after_from
from bot.live.journal import Journal, JournalOrder
from bot.live.orders import OrderOutcome, outcome_from_ccxt
from config.schema import BrokerConfig, LiveConfig

log = logging.getLogger(__name__)


class LiveTradingError(RuntimeError):
    """A failure the daemon cannot trade through (bad credentials, no permission)."""


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

    def attach(self, bus: EventBus) -> None:
        """Collect ``SubmitOrder`` from ``bus``; fills and rejections are published on it."""
        self._bus = bus
        bus.subscribe(SubmitOrder, self._pending.append)

    def discard_pending(self) -> list[SubmitOrder]:
        """Drop the collected orders (a cycle that must not trade) and return them."""
        pending, self._pending[:] = list(self._pending), []
        return pending

    async def execute_cycle(self, ts: int) -> int:
        """Journal the orders collected for the decision at ``ts``, then send them in order.

        Returns the number of orders of the cycle's plan. A resumed cycle (restart) keeps the
        plan journalled the first time and sends only what was never sent.
        """
        orders = self.discard_pending()
        await self.journal.plan_cycle(ts, orders, self.now_ms())
        plan = await self.journal.cycle_orders(ts)
        await self.send_planned(plan)
        return len(plan)

    async def send_planned(self, rows: list[JournalOrder]) -> None:
        """Send every ``planned`` order of ``rows`` (in order) and book what happens."""
        for row in rows:
            if row.status != "planned":
                continue
            await self.journal.mark_sending(row.client_order_id, self.now_ms())
            outcome = await self.send(row.submit_order())
            if outcome is not None:
                await self.apply(row, outcome)

    async def send(self, order: SubmitOrder) -> OrderOutcome | None:
        """Place ``order`` and follow it until it settles; None when its fate stays unknown."""
        raise NotImplementedError

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
        )
        bus = self._bus
        if booking:
            assert outcome.average_price is not None
            fee = outcome.fee * new / outcome.filled if outcome.filled else 0.0
            fill = OrderFilled(
                now,
                cid,
                row.symbol,
                row.side,
                new,
                outcome.average_price,
                fee,
                outcome.fee_asset or "",
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


class CcxtExecutor(LiveExecutor):
    """Orders on the exchange through a ccxt async client (Binance spot or its testnet)."""

    mode = "exchange"

    def __init__(
        self,
        exchange: Any,
        journal: Journal,
        now_ms: Callable[[], int],
        cfg: LiveConfig,
        rules: Mapping[str, MarketRules],
        quote: str,
        *,
        max_retries: int = 5,
        base_delay_s: float = 0.5,
        max_wait_s: float = 120.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        super().__init__(journal, now_ms)
        self.exchange = exchange
        self.cfg = cfg
        self.rules = rules
        self.quote = quote
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s
        self.max_wait_s = max_wait_s
        self._sleep = sleep
        self._retry_after = retry_after_from(exchange)

    async def send(self, order: SubmitOrder) -> OrderOutcome | None:
        """Place the order (retrying safely), then follow a limit order to its end."""
        outcome = await self._place(order)
        if outcome is None or outcome.settled:
            return outcome
        return await self._follow(order, outcome)

    async def _place(self, order: SubmitOrder) -> OrderOutcome | None:
        ex, cid = self.exchange, order.client_order_id
        coin = coin_of(order.symbol)
        price = None
        if order.order_type == "limit":
            price = order.limit_price or self._limit_price(order)
        uncertain = False  # an earlier try of this order may have reached the exchange
        for attempt in range(self.max_retries + 1):
            try:
                raw = await ex.create_order(
                    order.symbol,
                    order.order_type,
                    order.side,
                    order.amount,
                    price,
                    {"newClientOrderId": cid},
                )
                return outcome_from_ccxt(raw, coin, self.quote)
            except ccxt.InvalidOrder as exc:  # InsufficientFunds included
                if uncertain or "duplicate" in str(exc).lower():
                    # The first try may have gone through after all (its funds are spent, or
                    # it is on the book under this id): the exchange's record wins.
                    known = await self.lookup(order, quiet=True)
                    if known is not None:
                        return known
                return OrderOutcome("rejected", reason=describe_error(exc))
            except (ccxt.AuthenticationError, ccxt.PermissionDenied) as exc:
                raise LiveTradingError(
                    f"the exchange refused the API key for {order.symbol} orders: "
                    f"{describe_error(exc)}; check CRYPTORLPM_EXCHANGE_API_KEY / _SECRET"
                ) from exc
            except Exception as exc:
                if not is_temporary(exc):
                    return OrderOutcome("rejected", reason=describe_error(exc))
                if attempt >= self.max_retries:
                    log.error(
                        "order %s: gave up after %d tries (%s); its fate is checked at the "
                        "next reconciliation",
                        cid,
                        attempt + 1,
                        describe_error(exc),
                    )
                    return await self.lookup(order, quiet=True)
                delay = self._wait(attempt + 1, exc)
                refused = isinstance(exc, ccxt.DDoSProtection | ccxt.InvalidNonce)
                log.warning(
                    "order %s %s: %s; %s in %.2f s",
                    cid,
                    order.symbol,
                    describe_error(exc),
                    "resending" if refused else "checking whether it arrived",
                    delay,
                )
                if refused:
                    await self._sleep(delay)
                    if isinstance(exc, ccxt.InvalidNonce) or delay >= 0.5:
                        await self._resync_time()  # signed timestamps after a long wait
                    continue
                uncertain = True
                self.needs_reconcile = True
                known = await self._find_unknown(order, delay)
                if known is not None:
                    return known
        return None

    async def _find_unknown(self, order: SubmitOrder, delay: float) -> OrderOutcome | None:
        """Whether a request of unknown fate reached the exchange.

        A request the client gave up on may still be processed: the exchange is asked only after
        at least one more request timeout, and asked twice, a timeout apart, before the order
        is taken as never received (and resent under the same client id).
        """
        timeout_s = float(getattr(self.exchange, "timeout", 10_000)) / 1000
        await self._sleep(max(delay, timeout_s))
        for check in range(2):
            known = await self.lookup(order, quiet=True)
            if known is not None:
                return known
            if check == 0:
                await self._sleep(timeout_s)
        return None

    def _wait(self, attempt: int, exc: BaseException) -> float:
        delay = backoff_delay(attempt, self.base_delay_s)
        asked = self._retry_after(exc)
        if asked is not None:
            delay = max(delay, asked)
        return min(delay, self.max_wait_s)

    async def _resync_time(self) -> None:
        try:
            await self.exchange.load_time_difference()
        except Exception as exc:  # the next request will tell
            log.warning("could not resync with the exchange clock: %s", describe_error(exc))

    def _limit_price(self, order: SubmitOrder) -> float:
        offset = self.cfg.limit_offset_bps / 10_000
        sign = 1.0 if order.side == "buy" else -1.0
        rules = self.rules.get(coin_of(order.symbol), MarketRules())
        return rules.round_price(order.reference_price * (1 + sign * offset))

    async def lookup(self, order: SubmitOrder, *, quiet: bool = False) -> OrderOutcome | None:
        """The exchange's view of ``order`` by client id; None when it does not know it (or
        cannot say now)."""
        cid = order.client_order_id
        for attempt in range(self.max_retries + 1):
            try:
                raw = await self.exchange.fetch_order(cid, order.symbol, {"origClientOrderId": cid})
                return outcome_from_ccxt(raw, coin_of(order.symbol), self.quote)
            except ccxt.OrderNotFound:
                return None
            except Exception as exc:
                if not is_temporary(exc) or attempt >= self.max_retries:
                    self.needs_reconcile = True
                    if not quiet:
                        raise
                    log.error("cannot look up order %s: %s", cid, describe_error(exc))
                    return None
                await self._sleep(self._wait(attempt + 1, exc))
                if isinstance(exc, ccxt.InvalidNonce):
                    await self._resync_time()
        return None

    async def _follow(self, order: SubmitOrder, outcome: OrderOutcome) -> OrderOutcome | None:
        """Poll an open order until it settles or ``limit_timeout_s`` passes, then cancel it."""
        deadline = time.monotonic() + self.cfg.limit_timeout_s
        while time.monotonic() < deadline:
            await self._sleep(self.cfg.order_poll_s)
            current = await self.lookup(order, quiet=True)
            if current is not None:
                outcome = current
                if outcome.settled:
                    return outcome
        return await self.cancel(order, outcome)

    async def cancel(
        self, order: SubmitOrder, last: OrderOutcome | None = None
    ) -> OrderOutcome | None:
        """Cancel an open order and return its final state (it may have filled meanwhile)."""
        try:
            await self.exchange.cancel_order(
                last.exchange_order_id if last and last.exchange_order_id else None,
                order.symbol,
                {"origClientOrderId": order.client_order_id},
            )
        except ccxt.OrderNotFound:
            pass  # filled or cancelled in the meantime: the lookup below says which
        except Exception as exc:
            log.error("cancel of %s failed: %s", order.client_order_id, describe_error(exc))
        return await self.lookup(order, quiet=True) or last


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
        return OrderOutcome(
            "filled",
            filled=amount,
            average_price=price,
            fee=amount * price * self.fee_rate,
            fee_asset=self.account.quote,
            exchange_order_id=f"paper-{order.client_order_id}",
        )


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
