"""The trading side of the fake Binance: accounts, signed endpoints, orders and fills.

:class:`TradingMixin` is mixed into :class:`tests.fakes.binance.FakeBinance`; everything here
works on the exchange's clock (``self.now_ms``), markets (``self.state.markets``) and candles.

- Accounts: :meth:`TradingMixin.add_account` registers an API key, its secret and balances.
  Signed endpoints check ``X-MBX-APIKEY`` (401, -2015), the HMAC ``signature`` over the raw query
  string or form body (400, -1022) and ``timestamp`` against ``recvWindow`` (400, -1021) of the
  exchange clock; ``timestamp_clock = "wall"`` checks it against wall time instead (ccxt signs
  with wall time, so tests that drive the exchange clock want this), ``None`` not at all.
- Endpoints: ``GET /api/v3/account``, ``POST``/``GET``/``DELETE /api/v3/order``,
  ``GET /api/v3/openOrders``, ``/api/v3/allOrders`` and ``/api/v3/myTrades``, in Binance's shapes.
- Orders: MARKET orders fill at once at :meth:`TradingMixin.price` (commission ``fee_rate`` of the
  received asset, or, when the account holds enough BNB and BNBUSDT has a price, ``fee_rate``
  less Binance's 25 % discount paid in BNB); LIMIT orders rest with their funds locked and are
  matched whenever a request arrives (or on :meth:`TradingMixin.match_orders`): a buy fills at
  its limit when the price is at or below it, a sell at or above (a limit that crosses when
  placed fills at once at the price). :meth:`TradingMixin.partial_fills` makes orders fill only
  in part.
- Filters as Binance applies them: LOT_SIZE, PRICE_FILTER, NOTIONAL (market orders too),
  MARKET_LOT_SIZE (market orders) and PERCENT_PRICE_BY_SIDE (limit prices within the multipliers
  of the current price); ``newClientOrderId`` must match ``^[.A-Z:/a-z0-9_-]{1,36}$``.
- Crash tests: :meth:`TradingMixin.on_order` hooks run when an order request is ``"received"``
  (authenticated, not yet validated), ``"rejected"`` and ``"processed"`` (booked, answer not yet
  written); a hook may sleep, or kill the client.

Amounts are :class:`~decimal.Decimal` inside and 8-decimal strings on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import itertools
import re
import secrets as _secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import numpy as np
from aiohttp import web

from bot.timeframes import timeframe_ms
from config.schema import Secrets

if TYPE_CHECKING:
    from tests.fakes.binance import ExchangeState, MarketSpec

ZERO = Decimal(0)
EIGHT = Decimal("0.00000001")
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
DEFAULT_RECV_WINDOW = 5_000
MAX_RECV_WINDOW = 60_000
INSUFFICIENT = "Account has insufficient balance for requested action."
CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
BNB_DISCOUNT = Decimal("0.75")
"""Share of the commission paid when it is paid in BNB (Binance's 25 % discount)."""

OrderHook = Callable[[str, dict[str, Any]], Awaitable[None] | None]


# --------------------------------------------------------------------------- wire helpers


class BinanceError(Exception):
    """A Binance error answer, raised inside handlers: ``{"code": code, "msg": msg}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status, self.code, self.msg = status, code, msg

    def response(self) -> web.Response:
        return binance_error(self.status, self.code, self.msg)


def binance_error(status: int, code: int, msg: str) -> web.Response:
    """A Binance error answer: ``{"code": code, "msg": msg}`` with HTTP ``status``."""
    return web.json_response({"code": code, "msg": msg}, status=status)


def sign(payload: str, secret: str) -> str:
    """Binance's request signature: hex HMAC-SHA256 of the raw query string or body."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def check_signature(raw: str, secret: str) -> bool:
    """Whether ``raw`` (query string or form body) ends in ``&signature=`` of what precedes it."""
    payload, sep, signature = raw.rpartition("&signature=")
    return bool(sep) and hmac.compare_digest(sign(payload, secret), signature)


def _s(value: Decimal) -> str:
    """Binance's 8-decimal text."""
    return f"{value.quantize(EIGHT):f}"


def _q8(value: Decimal, rounding: str = ROUND_DOWN) -> Decimal:
    return value.quantize(EIGHT, rounding=rounding)


def _missing(name: str) -> BinanceError:
    return BinanceError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _decimal(params: dict[str, str], name: str) -> Decimal:
    if not params.get(name):
        raise _missing(name)
    try:
        value = Decimal(params[name])
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise BinanceError(
            400,
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is "
            "'^([0-9]{1,20})(\\.[0-9]{1,20})?$'.",
        )
    return value


# --------------------------------------------------------------------------- records


@dataclass
class Account:
    """One API key's spot wallet (``free`` and ``locked`` per asset)."""

    api_key: str
    secret: str
    free: dict[str, Decimal] = field(default_factory=dict)
    locked: dict[str, Decimal] = field(default_factory=dict)

    def add(self, asset: str, amount: Decimal, *, locked: bool = False) -> None:
        book = self.locked if locked else self.free
        book[asset] = book.get(asset, ZERO) + amount


@dataclass
class Fill:
    """One trade of an order."""

    trade_id: int
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_maker: bool


@dataclass
class Order:
    """An order the exchange accepted."""

    api_key: str
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    price: Decimal  # limit price; 0 for MARKET
    orig_qty: Decimal
    time: int
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    status: str = "NEW"
    update_time: int = 0
    lock_asset: str = ""
    locked: Decimal = ZERO  # what is still locked for the unfilled rest
    fills: list[Fill] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The order as ``GET /api/v3/order`` answers it."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": _s(self.price),
            "origQty": _s(self.orig_qty),
            "executedQty": _s(self.executed_qty),
            "cummulativeQuoteQty": _s(self.cum_quote),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "stopPrice": "0.00000000",
            "icebergQty": "0.00000000",
            "time": self.time,
            "updateTime": self.update_time,
            "isWorking": True,
            "workingTime": self.time,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def trade_json(self, fill: Fill) -> dict[str, Any]:
        """``fill`` as ``GET /api/v3/myTrades`` answers it."""
        return {
            "symbol": self.symbol,
            "id": fill.trade_id,
            "orderId": self.order_id,
            "orderListId": -1,
            "price": _s(fill.price),
            "qty": _s(fill.qty),
            "quoteQty": _s(fill.quote_qty),
            "commission": _s(fill.commission),
            "commissionAsset": fill.commission_asset,
            "time": fill.time,
            "isBuyer": self.side == "BUY",
            "isMaker": fill.is_maker,
            "isBestMatch": True,
        }


@dataclass
class OrderRequest:
    """A ``POST /api/v3/order`` the exchange received, accepted or not.

    ``outcome`` is ``"received"`` while in progress, then ``"accepted"`` (``order_id`` and
    ``status`` set) or ``"rejected"`` (``code`` and ``msg`` set).
    """

    received_ms: int
    api_key: str | None
    params: dict[str, str]
    outcome: str = "received"
    order_id: int | None = None
    status: str | None = None
    code: int | None = None
    msg: str | None = None

    @property
    def client_order_id(self) -> str | None:
        return self.params.get("newClientOrderId")


@dataclass
class PartialRule:
    """Fill only ``fraction`` for the next ``times`` fills (``None``: always) of ``symbol``."""

    fraction: Decimal
    times: int | None
    symbol: str | None


# --------------------------------------------------------------------------- the mixin


class TradingMixin:
    """Accounts, signed endpoints and order matching for the fake exchange."""

    state: ExchangeState
    now_ms: int

    def _init_trading(self) -> dict[tuple[str, str], Callable[[web.Request], Awaitable[Any]]]:
        """Set up the trading state; returns the signed routes to serve."""
        self.fee_rate: float = 0.001
        self.timestamp_clock: str | None = "exchange"
        self.order_requests: list[OrderRequest] = []
        self._accounts: dict[str, Account] = {}
        self._revoked: set[str] = set()
        self._orders: list[Order] = []
        self._order_ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        self._prices: dict[str, float] = {}
        self._partials: list[PartialRule] = []
        self._hooks: list[OrderHook] = []
        return {
            ("GET", "/api/v3/account"): self._signed(self._account),
            ("POST", "/api/v3/order"): self._new_order,
            ("GET", "/api/v3/order"): self._signed(self._query_order),
            ("DELETE", "/api/v3/order"): self._signed(self._cancel_order),
            ("GET", "/api/v3/openOrders"): self._signed(self._open_orders),
            ("GET", "/api/v3/allOrders"): self._signed(self._all_orders),
            ("GET", "/api/v3/myTrades"): self._signed(self._my_trades),
        }

    # ---- accounts

    def add_account(self, api_key: str, secret: str, balances: dict[str, float]) -> None:
        """Register (or replace) an API key with its secret and free balances."""
        self._accounts[api_key] = Account(
            api_key, secret, {asset: Decimal(str(v)) for asset, v in balances.items()}
        )

    def revoke(self, api_key: str) -> None:
        """Revoke ``api_key`` (as deleting it, or an IP whitelist change, does): every signed
        request with it now gets Binance's 401 -2015."""
        self._revoked.add(api_key)

    def set_balance(self, api_key: str, asset: str, free: float) -> None:
        """Set the free balance of ``asset`` (what is locked by open orders stays locked)."""
        self._accounts[api_key].free[asset] = Decimal(str(free))

    def secrets(self, api_key: str) -> Secrets:
        """:class:`Secrets` holding ``api_key`` and its secret, for ``create_exchange``."""
        account = self._accounts[api_key]
        return Secrets(exchange_api_key=account.api_key, exchange_secret=account.secret)

    def balances(self, api_key: str) -> dict[str, float]:
        """Total (free + locked) balance per asset."""
        account = self._accounts[api_key]
        assets = account.free.keys() | account.locked.keys()
        total = {a: account.free.get(a, ZERO) + account.locked.get(a, ZERO) for a in assets}
        return {a: float(v) for a, v in sorted(total.items())}

    def free(self, api_key: str) -> dict[str, float]:
        """Free balance per asset."""
        return {a: float(v) for a, v in sorted(self._accounts[api_key].free.items())}

    def locked(self, api_key: str) -> dict[str, float]:
        """Balance locked by open orders, per asset."""
        return {a: float(v) for a, v in sorted(self._accounts[api_key].locked.items())}

    def orders(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """Every order accepted (of ``api_key`` when given), oldest first, as Binance JSON."""
        return [o.to_json() for o in self._orders if api_key is None or o.api_key == api_key]

    def trades(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """Every fill (of ``api_key`` when given), oldest first, as ``myTrades`` JSON."""
        return [
            o.trade_json(f)
            for o in self._orders
            if api_key is None or o.api_key == api_key
            for f in o.fills
        ]

    # ---- prices

    def set_price(self, symbol: str, price: float | None) -> None:
        """Fix the price of ``symbol`` (``None`` goes back to the candles)."""
        if price is None:
            self._prices.pop(symbol, None)
        else:
            self._prices[symbol] = float(price)

    def price(self, symbol: str) -> float | None:
        """The current price: :meth:`set_price`'s, else the open of the stored candle (smallest
        interval first) open at ``now_ms``; past the candles, the close of the last one opened
        before now (before the first, its open). ``None`` without candles."""
        if symbol in self._prices:
            return self._prices[symbol]
        now = self.now_ms
        steps = sorted(
            (timeframe_ms(iv), rows) for (s, iv), rows in self.state.candles.items() if s == symbol
        )
        fallback = None
        for step, rows in steps:
            if len(rows) == 0:
                continue
            i = int(np.searchsorted(rows[:, 0], now, side="right")) - 1
            if i >= 0 and now < rows[i, 0] + step:
                return float(rows[i, 1])
            if fallback is None:
                fallback = float(rows[i, 4]) if i >= 0 else float(rows[0, 1])
        return fallback

    # ---- behaviour switches

    def partial_fills(
        self, fraction: float, times: int | None = 1, symbol: str | None = None
    ) -> None:
        """The next ``times`` order fills (``None``: all) of ``symbol`` (any when ``None``) fill
        only ``fraction`` (rounded down to the lot): a MARKET order then ends ``EXPIRED``; a LIMIT
        order that matches fills ``fraction`` of its rest and stays open (``PARTIALLY_FILLED``)."""
        self._partials.append(PartialRule(Decimal(str(fraction)), times, symbol))

    def clear_partial_fills(self) -> None:
        """Forget every :meth:`partial_fills` rule."""
        self._partials.clear()

    def on_order(self, hook: OrderHook) -> OrderHook:
        """Call ``hook(stage, info)`` (sync or async) on each ``POST /api/v3/order``: stage
        ``"received"`` after authentication, before validation; ``"rejected"`` before a
        rejection is answered; ``"processed"`` once the order is booked, before the answer is
        written. ``info`` has ``api_key``, ``params``, ``client_order_id`` and, when processed,
        ``order`` (Binance JSON); when rejected, ``code`` and ``msg``."""
        self._hooks.append(hook)
        return hook

    def clear_order_hooks(self) -> None:
        """Remove every :meth:`on_order` hook."""
        self._hooks.clear()

    # ---- matching

    def match_orders(self) -> None:
        """Fill the resting LIMIT orders whose limit the current price reached."""
        for order in self._orders:
            if order.is_open and order.type == "LIMIT":
                price = self.price(order.symbol)
                if price is not None:
                    self._match(order, Decimal(str(price)), taker=False)

    def _match(self, order: Order, price: Decimal, *, taker: bool) -> None:
        crosses = price <= order.price if order.side == "BUY" else price >= order.price
        if not crosses:
            return
        qty = order.remaining
        fraction = self._take_partial(order.symbol)
        if fraction is not None:
            qty = min(qty, self._floor_lot(order.symbol, fraction * order.remaining))
        self._fill(order, qty, price if taker else order.price, is_maker=not taker)

    def _take_partial(self, symbol: str) -> Decimal | None:
        for rule in self._partials:
            if rule.symbol in (None, symbol) and (rule.times is None or rule.times > 0):
                if rule.times is not None:
                    rule.times -= 1
                return rule.fraction
        return None

    def _floor_lot(self, symbol: str, qty: Decimal) -> Decimal:
        step = Decimal(self.state.markets[symbol].step_size)
        return (qty // step) * step if step > 0 else qty

    def _fill(self, order: Order, qty: Decimal, price: Decimal, *, is_maker: bool) -> None:
        """Book a trade of ``qty`` at ``price`` and move the account's balances."""
        now = self.now_ms
        order.update_time = now
        if qty > 0:
            account = self._accounts[order.api_key]
            market = self.state.markets[order.symbol]
            fee = Decimal(str(self.fee_rate))
            quote_qty = _q8(qty * price)
            bnb = self._bnb_commission(account, market, quote_qty)
            if order.side == "BUY":
                commission, asset = _q8(qty * fee, ROUND_UP), market.base
                if bnb is not None:
                    commission, asset = bnb
                spent = quote_qty
                if order.lock_asset:  # the limit reserved qty * limit price
                    release = min(order.locked, _q8(qty * order.price, ROUND_UP))
                    order.locked -= release
                    account.add(market.quote, -release, locked=True)
                    account.add(market.quote, release - spent)
                else:
                    account.add(market.quote, -spent)
                account.add(market.base, qty - (commission if asset == market.base else ZERO))
            else:
                commission, asset = _q8(quote_qty * fee, ROUND_UP), market.quote
                if bnb is not None:
                    commission, asset = bnb
                if order.lock_asset:
                    release = min(order.locked, qty)
                    order.locked -= release
                    account.add(market.base, -release, locked=True)
                else:
                    account.add(market.base, -qty)
                account.add(
                    market.quote, quote_qty - (commission if asset == market.quote else ZERO)
                )
            if asset == "BNB" and asset not in (market.base, market.quote):
                account.add("BNB", -commission)
            trade_id = next(self._trade_ids)
            order.fills.append(
                Fill(trade_id, price, qty, quote_qty, commission, asset, now, is_maker)
            )
            order.executed_qty += qty
            order.cum_quote += quote_qty
        if order.remaining <= 0:
            self._close(order, "FILLED")
        elif order.executed_qty > 0:
            order.status = "PARTIALLY_FILLED"

    def _bnb_commission(
        self, account: Account, market: MarketSpec, quote_qty: Decimal
    ) -> tuple[Decimal, str] | None:
        """The commission in BNB, when the account holds enough of it (Binance's "use BNB to pay
        fees") and BNB has a price in the trade's quote currency; else None."""
        if "BNB" in (market.base, market.quote):
            return None
        free = account.free.get("BNB", ZERO)
        price = (
            self.price(f"BNB{market.quote}") if f"BNB{market.quote}" in self.state.markets else None
        )
        if free <= 0 or not price:
            return None
        commission = _q8(
            quote_qty * Decimal(str(self.fee_rate)) * BNB_DISCOUNT / Decimal(str(price)), ROUND_UP
        )
        return (commission, "BNB") if free >= commission else None

    def _close(self, order: Order, status: str) -> None:
        """End ``order`` with ``status`` and give back whatever it still locks."""
        order.status = status
        order.update_time = self.now_ms
        if order.lock_asset and order.locked:
            account = self._accounts[order.api_key]
            account.add(order.lock_asset, -order.locked, locked=True)
            account.add(order.lock_asset, order.locked)
            order.locked = ZERO

    # ---- authentication

    def _signed(
        self, handler: Callable[[web.Request, Account, dict[str, str]], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            try:
                account, params = await self._authenticate(request)
                return await handler(request, account, params)
            except BinanceError as error:
                return error.response()

        return serve

    async def _authenticate(self, request: web.Request) -> tuple[Account, dict[str, str]]:
        """The account and the parameters (query and form body) of a signed request."""
        key = request.headers.get("X-MBX-APIKEY", "")
        account = None if key in self._revoked else self._accounts.get(key)
        if account is None:
            raise BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        query = request.rel_url.raw_query_string
        body = await request.text()
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        if not params.get("signature"):
            raise _missing("signature")
        # Binance signs the query string followed by the body (no separator between them).
        if not check_signature(query + body, account.secret):
            raise BinanceError(400, -1022, "Signature for this request is not valid.")
        try:
            timestamp = int(params["timestamp"])
            window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW))
        except (KeyError, ValueError):
            raise _missing("timestamp") from None
        if not 0 < window <= MAX_RECV_WINDOW:
            raise BinanceError(400, -1131, "recvWindow must be less than 60000")
        if self.timestamp_clock is None:
            return account, params
        now = self.now_ms if self.timestamp_clock == "exchange" else time.time_ns() // 1_000_000
        if timestamp > now + 1000:
            raise BinanceError(
                400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
            )
        if now - timestamp > window:
            raise BinanceError(
                400, -1021, "Timestamp for this request is outside of the recvWindow."
            )
        return account, params

    def _market(self, params: dict[str, str]) -> MarketSpec:
        symbol = params.get("symbol")
        if not symbol:
            raise _missing("symbol")
        if symbol not in self.state.markets:
            raise BinanceError(400, -1121, "Invalid symbol.")
        return self.state.markets[symbol]

    def _find(self, account: Account, params: dict[str, str]) -> Order | None:
        symbol = self._market(params).symbol
        order_id, client_id = params.get("orderId"), params.get("origClientOrderId")
        if not order_id and not client_id:
            raise BinanceError(
                400,
                -1102,
                "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
            )
        for order in reversed(self._orders):
            if order.api_key != account.api_key or order.symbol != symbol:
                continue
            if (order_id and str(order.order_id) == order_id) or (
                not order_id and order.client_order_id == client_id
            ):
                return order
        return None

    async def _run_hooks(self, stage: str, info: dict[str, Any]) -> None:
        for hook in list(self._hooks):
            result = hook(stage, info)
            if inspect.isawaitable(result):
                await result

    # ---- endpoints

    async def _account(
        self, request: web.Request, account: Account, params: dict[str, str]
    ) -> web.Response:
        rate = _s(Decimal(str(self.fee_rate)))
        bps = int(Decimal(str(self.fee_rate)) * 10_000)
        assets = sorted(account.free.keys() | account.locked.keys())
        balances = [
            {
                "asset": a,
                "free": _s(account.free.get(a, ZERO)),
                "locked": _s(account.locked.get(a, ZERO)),
            }
            for a in assets
        ]
        if params.get("omitZeroBalances") == "true":
            balances = [b for b in balances if Decimal(b["free"]) or Decimal(b["locked"])]
        return web.json_response(
            {
                "makerCommission": bps,
                "takerCommission": bps,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "commissionRates": {"maker": rate, "taker": rate, "buyer": "0", "seller": "0"},
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.now_ms,
                "accountType": "SPOT",
                "balances": balances,
                "permissions": ["SPOT"],
                "uid": 1000 + list(self._accounts).index(account.api_key),
            }
        )

    async def _new_order(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        record = OrderRequest(
            self.now_ms,
            request.headers.get("X-MBX-APIKEY"),
            dict(parse_qsl(request.rel_url.raw_query_string + "&" + raw, keep_blank_values=True)),
        )
        self.order_requests.append(record)
        info: dict[str, Any] = {"api_key": record.api_key}
        try:
            account, params = await self._authenticate(request)
            record.params = params
            info |= {"params": params, "client_order_id": params.get("newClientOrderId")}
            await self._run_hooks("received", info)
            order = self._place(account, params)
        except BinanceError as error:
            record.outcome, record.code, record.msg = "rejected", error.code, error.msg
            if "params" in info:  # authenticated: the hooks saw it arrive
                await self._run_hooks("rejected", info | {"code": error.code, "msg": error.msg})
            return error.response()
        record.outcome, record.order_id, record.status = "accepted", order.order_id, order.status
        await self._run_hooks("processed", info | {"order": order.to_json()})
        return web.json_response(self._order_response(order, params.get("newOrderRespType")))

    def _place(self, account: Account, params: dict[str, str]) -> Order:
        """Validate, book and (where it can) fill a new order; raises :class:`BinanceError`."""
        market = self._market(params)
        side, kind = params.get("side", ""), params.get("type", "")
        if not side:
            raise _missing("side")
        if side not in ("BUY", "SELL"):
            raise BinanceError(400, -1117, "Invalid side.")
        if not kind:
            raise _missing("type")
        if kind not in ("MARKET", "LIMIT"):
            raise BinanceError(400, -1116, "Invalid orderType.")
        current = self.price(market.symbol)
        if kind == "MARKET":
            if current is None:
                raise BinanceError(400, -2010, f"fake Binance: no price for {market.symbol}")
            price = Decimal(str(current))
            if "quantity" not in params and "quoteOrderQty" in params:
                qty = self._floor_lot(market.symbol, _decimal(params, "quoteOrderQty") / price)
            else:
                qty = _decimal(params, "quantity")
            tif = "GTC"
        else:
            qty, price = _decimal(params, "quantity"), _decimal(params, "price")
            tif = params.get("timeInForce", "")
            if not tif:
                raise _missing("timeInForce")
            if tif not in ("GTC", "IOC", "FOK"):
                raise BinanceError(400, -1115, "Invalid timeInForce.")
        self._check_filters(market, qty, price, limit=kind == "LIMIT", side=side)
        client_id = params.get("newClientOrderId") or f"fake{_secrets.token_hex(10)}"
        if not CLIENT_ID.match(client_id):
            raise BinanceError(
                400,
                -1100,
                "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.",
            )
        if any(
            o.api_key == account.api_key and o.is_open and o.client_order_id == client_id
            for o in self._orders
        ):
            raise BinanceError(400, -2010, "Duplicate order sent.")
        if side == "BUY":
            need, asset = _q8(qty * price, ROUND_UP), market.quote
        else:
            need, asset = qty, market.base
        if account.free.get(asset, ZERO) < need:
            raise BinanceError(400, -2010, INSUFFICIENT)
        now = self.now_ms
        order = Order(
            account.api_key,
            next(self._order_ids),
            client_id,
            market.symbol,
            side,
            kind,
            tif,
            price if kind == "LIMIT" else ZERO,
            qty,
            now,
            update_time=now,
        )
        self._orders.append(order)
        if kind == "MARKET":
            fraction = self._take_partial(market.symbol)
            filled = qty
            if fraction is not None:
                filled = min(qty, self._floor_lot(market.symbol, fraction * qty))
            self._fill(order, filled, price, is_maker=False)
            if order.is_open or order.executed_qty == 0:
                self._close(order, "EXPIRED")
            return order
        order.lock_asset, order.locked = asset, need
        account.add(asset, -need)
        account.add(asset, need, locked=True)
        if current is not None:
            now_price = Decimal(str(current))
            crosses = now_price <= price if side == "BUY" else now_price >= price
            if tif == "FOK" and not (crosses and self._take_partial(market.symbol) is None):
                self._close(order, "EXPIRED")
            else:
                self._match(order, now_price, taker=True)
        if tif != "GTC" and order.is_open:  # IOC: what did not fill at once expires
            self._close(order, "EXPIRED")
        return order

    def _check_filters(
        self, market: MarketSpec, qty: Decimal, price: Decimal, *, limit: bool, side: str
    ) -> None:
        step, min_qty = Decimal(market.step_size), Decimal(market.min_qty)
        if qty < min_qty or qty > 9000 or (step > 0 and (qty - min_qty) % step != 0):
            raise BinanceError(400, -1013, "Filter failure: LOT_SIZE")
        if not limit and qty > Decimal(market.market_max_qty):
            raise BinanceError(400, -1013, "Filter failure: MARKET_LOT_SIZE")
        if limit:
            tick = Decimal(market.tick_size)
            if price < tick or price > 1_000_000 or (tick > 0 and (price - tick) % tick != 0):
                raise BinanceError(400, -1013, "Filter failure: PRICE_FILTER")
            current = self.price(market.symbol)
            if current is not None:
                now = Decimal(str(current))
                up, down = Decimal(market.percent_up), Decimal(market.percent_down)
                if not now * down <= price <= now * up:
                    raise BinanceError(400, -1013, "Filter failure: PERCENT_PRICE_BY_SIDE")
        if qty * price < Decimal(market.min_notional):
            raise BinanceError(400, -1013, "Filter failure: NOTIONAL")

    def _order_response(self, order: Order, resp_type: str | None) -> dict[str, Any]:
        ack = {
            "symbol": order.symbol,
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "transactTime": order.time,
        }
        if resp_type == "ACK":
            return ack
        full = order.to_json()
        for key in ("stopPrice", "icebergQty", "time", "updateTime", "isWorking"):
            full.pop(key)
        result = ack | full
        if resp_type == "RESULT":
            return result
        fills = [
            {
                "price": _s(f.price),
                "qty": _s(f.qty),
                "commission": _s(f.commission),
                "commissionAsset": f.commission_asset,
                "tradeId": f.trade_id,
            }
            for f in order.fills
        ]
        return result | {"fills": fills}

    async def _query_order(
        self, request: web.Request, account: Account, params: dict[str, str]
    ) -> web.Response:
        order = self._find(account, params)
        if order is None:
            raise BinanceError(400, -2013, "Order does not exist.")
        return web.json_response(order.to_json())

    async def _cancel_order(
        self, request: web.Request, account: Account, params: dict[str, str]
    ) -> web.Response:
        order = self._find(account, params)
        if order is None or not order.is_open:
            raise BinanceError(400, -2011, "Unknown order sent.")
        self._close(order, "CANCELED")
        answer = order.to_json()
        for key in ("stopPrice", "icebergQty", "time", "updateTime", "isWorking", "workingTime"):
            answer.pop(key)
        answer["origClientOrderId"] = order.client_order_id
        answer["clientOrderId"] = params.get("newClientOrderId") or f"fake{_secrets.token_hex(10)}"
        answer["transactTime"] = self.now_ms
        return web.json_response(answer)

    async def _open_orders(
        self, request: web.Request, account: Account, params: dict[str, str]
    ) -> web.Response:
        symbol = self._market(params).symbol if params.get("symbol") else None
        return web.json_response(
            [
                o.to_json()
                for o in self._orders
                if o.api_key == account.api_key and o.is_open and symbol in (None, o.symbol)
            ]
        )

    async def _all_orders(
        self, request: web.Request, account: Account, params: dict[str, str]
    ) -> web.Response:
        symbol = self._market(params).symbol
        start = int(params.get("startTime", 0))
        end = int(params.get("endTime", 2**62))
        mine = [
            o
            for o in self._orders
            if o.api_key == account.api_key and o.symbol == symbol and start <= o.time <= end
        ]
        limit = int(params.get("limit", 500))
        # With startTime Binance lists the oldest orders from it; without, the most recent.
        chosen = mine[:limit] if "startTime" in params else mine[-limit:]
        return web.json_response([o.to_json() for o in chosen])

    async def _my_trades(
        self, request: web.Request, account: Account, params: dict[str, str]
    ) -> web.Response:
        symbol = self._market(params).symbol
        order_id = params.get("orderId")
        start, end = int(params.get("startTime", 0)), params.get("endTime")
        from_id = int(params.get("fromId", 0))
        trades = [
            o.trade_json(f)
            for o in self._orders
            if o.api_key == account.api_key
            and o.symbol == symbol
            and (not order_id or str(o.order_id) == order_id)
            for f in o.fills
            if f.time >= start and (end is None or f.time <= int(end)) and f.trade_id >= from_id
        ]
        trades.sort(key=lambda t: t["id"])
        return web.json_response(trades[: int(params.get("limit", 500))])
