"""Orders on the exchange through ccxt (Binance spot or its testnet), by the order path's rule.

Every error of a request is sorted at this boundary, by the exchange's code where it has one
(ccxt's class for a code depends on the URL and on whether a private call already succeeded):

=============================== =========================================================
what came back                  what the executor does
=============================== =========================================================
-2015 / -2014 / -1022, or any   :class:`~bot.venues.base.LiveTradingError`: trading halts,
``AuthenticationError``         nothing is resent (the guard refuses every later signed call)
418 / 429 (``ExchangeBanned``), not placed: resent after ``Retry-After`` if that is at most
-1003 / -1015, -1008 busy,      ``max_wait_s`` away, else left unsent (the daemon skips its
-1021 stale timestamp           cycles until the ban has passed)
timeout, -1007, 5xx, dropped    unknown: never resent blind; looked up (by client id, then in
connection, unreadable answer   ``allOrders``) until the exchange's record settles it
any other rejection             final ``rejected`` (an earlier try may still have gone through:
(filters, insufficient funds)   "Duplicate order sent." is looked up)
=============================== =========================================================

Fees: the FULL answer of ``create_order`` carries each fill's commission; an order settled by a
lookup (``fetch_order`` has none) or a limit order gets them from ``myTrades`` (``orderId``).
Commissions in another asset (BNB) are valued at its last price in the quote currency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ccxt

from bot.engine.account import coin_of
from bot.engine.rules import DEFAULT_RULES, MarketRules
from bot.events import SubmitOrder
from bot.feed.exchange import describe_error, exchange_code, is_temporary
from bot.feed.guard import CREDENTIAL_CODES, CredentialsRejected
from bot.feed.retry import backoff_delay, retry_after_from
from bot.venues.base import (
    ABSENT,
    LiveTradingError,
    NotSent,
    OpenOrder,
    Placement,
    Record,
    Uncertain,
    Unreachable,
)
from bot.venues.orders import OrderOutcome, fees_from_trades, outcome_from_ccxt
from config.schema import LiveConfig

log = logging.getLogger(__name__)

REFUSED_CODES = frozenset({-1003, -1004, -1008, -1015, -1021})
"""Binance codes of a request refused before it was acted on (weight, busy, busy, too many
orders, stale timestamp)."""
ARCHIVED = -2026
"""Binance: the order was canceled or expired with nothing filled and has been archived."""


def credentials_error(exc: BaseException, what: str) -> LiveTradingError:
    """The daemon's error for a refused API key met while doing ``what``."""
    return LiveTradingError(
        f"the exchange refused the API key while {what}: {describe_error(exc)}; trading is "
        "halted: check CRYPTORLPM_EXCHANGE_API_KEY / CRYPTORLPM_EXCHANGE_SECRET (testnet keys "
        "for the testnet, IP whitelist, trading permission), then restart the daemon"
    )


def is_credentials_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the key is refused, whatever class ccxt gave it."""
    return (
        isinstance(exc, CredentialsRejected | ccxt.AuthenticationError | ccxt.PermissionDenied)
        or exchange_code(exc) in CREDENTIAL_CODES
    )


def is_refused(exc: BaseException) -> bool:
    """Whether the exchange refused the request before acting on it (safe to send again)."""
    return (
        isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded | ccxt.InvalidNonce)
        or exchange_code(exc) in REFUSED_CODES
    )


class CcxtVenue:
    """The exchange through a ccxt async client, as a venue (see the module docstring).

    ``horizon_ms``: a request signed at ``sent_ms`` is refused by the exchange after ``sent_ms
    + recvWindow``; ``[live].unknown_settle_s`` more leaves room for one received in time and
    still in the matching engine's queue. ``exchange_time`` reads the exchange's clock.
    """

    name = "exchange"

    def __init__(
        self,
        exchange: Any,
        cfg: LiveConfig,
        rules: Mapping[str, MarketRules],
        quote: str,
        *,
        now_ms: Callable[[], int],
        exchange_time: Callable[[], Awaitable[int]] | None = None,
        max_retries: int = 5,
        base_delay_s: float = 0.5,
        max_wait_s: float = 30.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.now_ms = now_ms
        self.exchange_time = exchange_time
        self.exchange = exchange
        self.cfg = cfg
        self.rules = rules
        self.quote = quote
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s
        self.max_wait_s = max_wait_s
        """Longest wait for a refused request to be sent again within a cycle."""
        self._sleep = sleep
        self._retry_after = retry_after_from(exchange)
        recv_window = int((exchange.options or {}).get("recvWindow", 10_000))
        self.horizon_ms = recv_window + int(cfg.unknown_settle_s * 1000)
        self._prices: dict[str, tuple[int, float]] = {}

    # -- placing --------------------------------------------------------------------------------

    def shape(self, order: SubmitOrder) -> SubmitOrder:
        """A limit order at the reference price +- ``limit_offset_bps`` when ``[live].order_type
        = "limit"``, else the planner's market order."""
        if self.cfg.order_type != "limit" or order.order_type == "limit":
            return order
        return order._replace(order_type="limit", limit_price=self._limit_price(order))

    async def submit(self, order: SubmitOrder) -> Placement:
        """Place the order (resending only what the exchange refused), then follow a limit
        order to its end; fees from ``myTrades`` when the answer carried none."""
        placed = await self._place(order)
        if not isinstance(placed, OrderOutcome):
            return placed
        if not placed.settled:
            placed = await self._follow(order, placed)
        return await self._with_fees(order, placed)

    async def _place(self, order: SubmitOrder) -> Placement:
        ex, cid = self.exchange, order.client_order_id
        price = None
        if order.order_type == "limit":
            price = order.limit_price or self._limit_price(order)
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
                return outcome_from_ccxt(raw, coin_of(order.symbol), self.quote)
            except Exception as exc:
                if is_credentials_failure(exc):
                    raise credentials_error(exc, f"placing {cid}") from exc
                if is_refused(exc):
                    wait = self._wait(attempt + 1, exc)
                    if wait > self.max_wait_s or attempt >= self.max_retries:
                        return NotSent(describe_error(exc))
                    log.warning(
                        "order %s %s: %s; sending it again in %.2f s",
                        cid,
                        order.symbol,
                        describe_error(exc),
                        wait,
                    )
                    await self._sleep(wait)
                    await self._resync_time()
                    continue
                if is_temporary(exc):
                    log.warning(
                        "order %s %s: %s; its fate is unknown: looking it up, never resending "
                        "blind",
                        cid,
                        order.symbol,
                        describe_error(exc),
                    )
                    return Uncertain(describe_error(exc))
                if "duplicate" in str(exc).lower():
                    known = await self.lookup(order)
                    if isinstance(known, OrderOutcome):
                        return known
                return OrderOutcome("rejected", reason=describe_error(exc))
        return NotSent("retries spent")  # pragma: no cover - the loop returns

    def _wait(self, attempt: int, exc: BaseException) -> float:
        """Backoff, or the exchange's ``Retry-After`` in full when it asked for longer."""
        delay = backoff_delay(attempt, self.base_delay_s)
        asked = self._retry_after(exc)
        return max(delay, asked) if asked is not None else delay

    async def _resync_time(self) -> None:
        try:
            await self.exchange.load_time_difference()
        except Exception as exc:  # the next request will tell
            log.warning("could not resync with the exchange clock: %s", describe_error(exc))

    def _limit_price(self, order: SubmitOrder) -> float:
        offset = self.cfg.limit_offset_bps / 10_000
        sign = 1.0 if order.side == "buy" else -1.0
        rules = self.rules.get(coin_of(order.symbol), DEFAULT_RULES)
        return rules.round_price(order.reference_price * (1 + sign * offset))

    async def _follow(self, order: SubmitOrder, outcome: OrderOutcome) -> OrderOutcome:
        """Poll an open order every ``order_poll_s`` until it settles or ``limit_timeout_s``
        passes, then cancel it."""
        polls = max(1, int(self.cfg.limit_timeout_s / self.cfg.order_poll_s))
        for _ in range(polls):
            await self._sleep(self.cfg.order_poll_s)
            current = await self.lookup(order)
            if isinstance(current, OrderOutcome):
                outcome = current
                if outcome.settled:
                    return outcome
        return await self.cancel(order, outcome)

    # -- the exchange's record ------------------------------------------------------------------

    async def lookup(self, order: SubmitOrder, since_ms: int | None = None) -> Record:
        """The exchange's record of ``order``: by client id, then in ``allOrders`` since
        ``since_ms`` (when given); ``ABSENT`` when neither has it."""
        cid, symbol = order.client_order_id, order.symbol
        try:
            raw = await self._call(
                self.exchange.fetch_order, cid, symbol, {"origClientOrderId": cid}
            )
            found = outcome_from_ccxt(raw, coin_of(symbol), self.quote)
        except ccxt.OrderNotFound:
            found = None
        except Exception as exc:
            if exchange_code(exc) == ARCHIVED:
                return OrderOutcome("expired", reason="archived: canceled or expired, not filled")
            return self._unreachable(exc, f"looking up {cid}")
        if found is not None:
            return await self._with_fees(order, found) if found.settled else found
        if since_ms is None:
            return ABSENT
        try:
            orders = await self._call(self.exchange.fetch_orders, symbol, since_ms, 1000)
        except Exception as exc:
            return self._unreachable(exc, f"listing {symbol} orders")
        for raw in orders:
            if raw.get("clientOrderId") == cid:
                return await self._with_fees(
                    order, outcome_from_ccxt(raw, coin_of(symbol), self.quote)
                )
        return ABSENT

    def _unreachable(self, exc: BaseException, what: str) -> Unreachable:
        if is_credentials_failure(exc):
            raise credentials_error(exc, what) from exc
        log.warning("cannot ask the exchange (%s): %s", what, describe_error(exc))
        return Unreachable(describe_error(exc))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A read (lookup, balances): temporary errors retried a few times with backoff; a
        refusal's ``Retry-After`` is honoured in full when short, else the error is raised."""
        for attempt in range(self.max_retries + 1):
            try:
                return await fn(*args)
            except Exception as exc:
                if not is_temporary(exc) or is_credentials_failure(exc):
                    raise
                wait = self._wait(attempt + 1, exc)
                if attempt >= self.max_retries or wait > self.max_wait_s:
                    raise
                await self._sleep(wait)
                if isinstance(exc, ccxt.InvalidNonce) or exchange_code(exc) == -1021:
                    await self._resync_time()
        raise AssertionError("unreachable")  # pragma: no cover

    async def clock_ms(self, estimate_ms: int) -> int:
        """The exchange's clock, read from it (the local estimate may run ahead); 0 when it
        cannot be read, so nothing is concluded from a guess."""
        if self.exchange_time is None:
            return estimate_ms
        try:
            return int(await self.exchange_time())
        except Exception as exc:
            if is_credentials_failure(exc):
                raise credentials_error(exc, "reading the exchange's time") from exc
            log.warning("cannot read the exchange's time: %s", describe_error(exc))
            return 0

    # -- fees -------------------------------------------------------------------------------------

    async def _with_fees(self, order: SubmitOrder, outcome: OrderOutcome) -> OrderOutcome:
        """``outcome`` with every commission, from ``myTrades`` when the answer had none, and
        valued in the quote currency."""
        fees = dict(outcome.fees)
        if not outcome.fees_known and outcome.exchange_order_id:
            try:
                trades = await self._call(
                    self.exchange.fetch_my_trades,
                    order.symbol,
                    None,
                    None,
                    {"orderId": outcome.exchange_order_id},
                )
                fees = fees_from_trades(trades)
            except Exception as exc:
                if is_credentials_failure(exc):
                    raise credentials_error(
                        exc, f"reading the fills of {order.client_order_id}"
                    ) from exc
                log.warning(
                    "fees of order %s unknown for now (myTrades: %s); the next reconciliation "
                    "takes the balances from the exchange",
                    order.client_order_id,
                    describe_error(exc),
                )
                return outcome
        if not fees:
            return outcome
        coin = coin_of(order.symbol)
        value = 0.0
        for asset, amount in fees.items():
            if asset == self.quote:
                value += amount
            elif asset == coin and outcome.average_price:
                value += amount * outcome.average_price
            else:
                price = await self._asset_price(asset)
                if price is None:
                    return outcome.with_fees(fees, None)
                value += amount * price
        return outcome.with_fees(fees, value)

    async def _asset_price(self, asset: str) -> float | None:
        """Last price of ``asset`` in the quote currency (cached for a minute)."""
        now = self.now_ms()
        cached = self._prices.get(asset)
        if cached is not None and now - cached[0] < 60_000:
            return cached[1]
        symbol = f"{asset}/{self.quote}"
        try:
            ticker = await self._call(self.exchange.fetch_ticker, symbol)
            price = float(ticker.get("last") or ticker.get("close") or 0.0) or None
        except Exception as exc:
            if is_credentials_failure(exc):
                raise credentials_error(exc, f"pricing {asset}") from exc
            log.warning("cannot value a commission in %s: %s", asset, describe_error(exc))
            return None
        if price is not None:
            self._prices[asset] = (now, price)
        return price

    # -- balances and open orders ---------------------------------------------------------------

    async def balances(self, coins: tuple[str, ...], quote: str) -> dict[str, float]:
        """The exchange's totals (free + locked) per asset."""
        try:
            balance: dict[str, Any] = await self._call(self.exchange.fetch_balance)
        except Exception as exc:
            if is_credentials_failure(exc):
                raise credentials_error(exc, "reading balances") from exc
            raise
        return {a: float(v or 0.0) for a, v in (balance.get("total") or {}).items()}

    async def cancel(self, order: SubmitOrder, last: OrderOutcome | None = None) -> OrderOutcome:
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
            if is_credentials_failure(exc):
                raise credentials_error(exc, f"cancelling {order.client_order_id}") from exc
            log.error("cancel of %s failed: %s", order.client_order_id, describe_error(exc))
        found = await self.lookup(order)
        if isinstance(found, OrderOutcome):
            return found
        return last or OrderOutcome("canceled")

    async def open_orders(self, coins: tuple[str, ...], quote: str) -> list[OpenOrder]:
        """Every order resting on the exchange's book for ``coins``."""
        found = []
        for coin in coins:
            symbol = f"{coin}/{quote}"
            try:
                rows = await self._call(self.exchange.fetch_open_orders, symbol)
            except Exception as exc:
                if is_credentials_failure(exc):
                    raise credentials_error(exc, f"listing open {symbol} orders") from exc
                log.warning("cannot list open %s orders: %s", symbol, describe_error(exc))
                continue
            found += [
                OpenOrder(str(r.get("clientOrderId") or ""), symbol, r.get("id")) for r in rows
            ]
        return found

    async def cancel_open(self, order: OpenOrder) -> None:
        """Cancel a resting order by its exchange id."""
        try:
            await self.exchange.cancel_order(order.exchange_order_id, order.symbol)
        except Exception as exc:
            if is_credentials_failure(exc):
                raise credentials_error(exc, f"cancelling {order.client_order_id}") from exc
            raise
