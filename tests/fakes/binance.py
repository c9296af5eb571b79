"""A fake Binance spot exchange on 127.0.0.1 that speaks the protocol ccxt sends.

``async with FakeBinance() as fake:`` starts an aiohttp server on a free port; point ccxt at it
with ``fake.exchange_config()`` (see ``bot.feed.exchange``).

TLS (the default): ccxt applies Binance's spot error table only to URLs on its real hosts
(``get_exceptions_by_url`` checks the prefix ``https://testnet.binance.vision``), so the fake
serves HTTPS with a throwaway certificate authority (``trustme``) for ``testnet.binance.vision``
and ``127.0.0.1``, and :meth:`FakeBinance.exchange_config` points ccxt at
``https://testnet.binance.vision:PORT`` with ``[exchange].resolve`` sending that name to
127.0.0.1 and ``[exchange].ca_file`` trusting the authority: every Binance error reaches ccxt as
it does from the testnet, and is classified the same way. ``FakeBinance(tls=False)`` serves
plain HTTP on ``fake.url`` (ccxt then maps some codes differently). It answers:

- REST: ``GET /api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo`` and ``/api/v3/klines``
  (Binance semantics: ``startTime``/``endTime`` bound the open time, ``limit`` defaults to 500,
  at most 1000; 12-field rows with prices as strings; nothing that opens after ``now_ms``, but
  the candle still open at ``now_ms`` is returned, as Binance does);
- the kline websocket on any path: Binance's combined stream (``/stream?streams=a/b``,
  payloads wrapped in ``{"stream": .., "data": ..}``), the raw ``/ws/<stream>`` endpoint, and
  ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS`` answered ``{"result": .., "id": ..}``
  (what ccxt.pro sends). :meth:`FakeBinance.push_kline` sends kline events (closed or not, any
  event time, duplicates); :meth:`FakeBinance.stream_klines` pushes every close as the clock
  passes it; :meth:`FakeBinance.drop_websockets` closes every socket,
  :meth:`FakeBinance.expire_websockets` the ones older than 24 h (Binance's limit),
  :meth:`FakeBinance.stall_websockets` silences the open ones, and
  :meth:`FakeBinance.ping_websockets` pings them (Binance pings every 20 s; :attr:`pongs`
  counts the answers).

Everything the exchange knows lives in one :class:`ExchangeState` (clock, markets, candles,
faults, request log). Endpoints are entries of a routes table keyed by ``(method, path)``, so
signed account and order endpoints can be added with :meth:`FakeBinance.add_route`;
:func:`sign` and :func:`check_signature` implement Binance's HMAC-SHA256 request signing.

Fault injection: :meth:`FakeBinance.inject` makes the next requests to a path answer a given
status, body and headers (a 429 with ``Retry-After``, a 418, a 5xx, a Binance error JSON), after
an optional number of normal answers and with an optional delay (to trigger client timeouts).

Trading (accounts, signed ``/api/v3/account``, ``/api/v3/order``, ``/api/v3/openOrders``,
``/api/v3/allOrders``, ``/api/v3/myTrades``, fills at the candles' price path, partial fills,
order hooks) comes from :class:`tests.fakes.binance_trading.TradingMixin`; a client is built with
``create_exchange(fake.exchange_config(), fake.secrets(api_key))`` after
``fake.add_account(api_key, secret, {"USDT": 1000.0})``.

Clock: ``now_ms`` is fixed when set, wall time when ``None``, or runs ``speed`` times faster
than real time from a start after :meth:`FakeBinance.accelerate`; :meth:`FakeBinance.advance`
moves it. Every answer carries ``X-MBX-USED-WEIGHT-1M`` (the request weight used in the current
minute of that clock, Binance's real weights); with ``weight_limit`` set, a request past it gets
a 429 with ``Retry-After`` up to the next minute. :meth:`FakeBinance.ban` is an IP ban: every
request gets a 418 whose ``Retry-After`` says what is left, and each request during the ban
extends it, as Binance does. Injected 429/418 carry ``Retry-After`` by default, and errors carry
Binance's real message texts (:data:`MESSAGES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import trustme
from aiohttp import WSMsgType, web

from bot.store.market import CANDLE_COLUMNS
from bot.timeframes import timeframe_ms
from config.schema import ExchangeConfig
from tests.fakes.binance_trading import (
    BinanceError,
    TradingMixin,
    binance_error,
    check_signature,
    sign,
)

__all__ = [
    "BinanceError",
    "ExchangeState",
    "FakeBinance",
    "Fault",
    "MarketSpec",
    "RecordedRequest",
    "binance_error",
    "check_signature",
    "sign",
    "synthetic_candles",
]

KLINES_DEFAULT_LIMIT = 500
KLINES_MAX_LIMIT = 1000
INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w")
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Request weight per endpoint, as Binance's spot API documents them; anything else weighs 1.
WEIGHTS = {
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/klines"): 2,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/order"): 4,
    ("GET", "/api/v3/allOrders"): 20,
    ("GET", "/api/v3/myTrades"): 20,
    ("GET", "/api/v3/ticker/24hr"): 2,
    ("GET", "/api/v3/ticker/price"): 2,
}
WEIGHT_WINDOW_MS = 60_000
WS_MAX_AGE_MS = 24 * 3_600_000
"""Binance closes every websocket connection after 24 hours."""
HOST = "testnet.binance.vision"
"""The host name the TLS fake answers as (what ccxt's sandbox mode uses for spot)."""

MESSAGES = {
    -1003: "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
    "Please use WebSocket Streams for live updates to avoid polling the API.",
    418: "Way too much request weight used; IP banned until {until}. Please use WebSocket "
    "Streams for live updates to avoid bans.",
    -1007: "Timeout waiting for response from backend server. Send status unknown; execution "
    "status unknown.",
    -1008: "Server is currently overloaded with other requests. Please try again in a few minutes.",
    -1001: "Internal error; unable to process your request. Please try again.",
}
"""Binance's texts for the errors the fake makes up itself."""


# --------------------------------------------------------------------------- state


@dataclass
class MarketSpec:
    """One spot market as ``exchangeInfo`` lists it (filters as Binance's decimal strings)."""

    symbol: str
    base: str
    quote: str
    tick_size: str = "0.01000000"
    step_size: str = "0.00001000"
    min_qty: str = "0.00001000"
    min_notional: str = "5.00000000"
    market_max_qty: str = "1000.00000000"
    """MARKET_LOT_SIZE ``maxQty``: the largest market order."""
    percent_up: str = "5"
    """PERCENT_PRICE_BY_SIDE: a limit price at most this times the current price..."""
    percent_down: str = "0.2"
    """...and at least this times it."""
    status: str = "TRADING"


@dataclass
class Fault:
    """An injected answer for ``times`` requests (``None``: forever) after ``after`` normal ones.

    ``status=None`` only delays the request by ``delay_s`` and then answers it normally.
    """

    status: int | None
    body: Any = None
    headers: dict[str, str] | None = None
    times: int | None = 1
    after: int = 0
    delay_s: float = 0.0
    processed: bool = False
    """The request is handled (an order is placed) and only its answer is replaced."""


@dataclass
class _Socket:
    """One websocket connection: its streams, whether it is a combined stream (payloads
    wrapped in ``{"stream", "data"}``), when it opened (exchange ms), whether it stalled."""

    streams: set[str]
    combined: bool
    opened_ms: int
    stalled: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    """A request the fake received: method, path, query parameters, arrival (wall ms), body."""

    method: str
    path: str
    query: dict[str, str]
    received_ms: int
    body: str = ""


@dataclass
class ExchangeState:
    """All the fake exchange knows (the trading side keeps its own, in the mixin).

    Clock: ``fixed_now_ms`` when set; else, while ``accel_speed`` is set,
    ``accel_start_ms + (monotonic seconds since accel_t0) * accel_speed * 1000``; else wall time.
    """

    fixed_now_ms: int | None = None
    markets: dict[str, MarketSpec] = field(default_factory=dict)
    candles: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    api_secrets: dict[str, str] = field(default_factory=dict)
    accel_start_ms: int = 0
    accel_speed: float | None = None
    accel_t0: float = 0.0
    weights: list[tuple[int, int]] = field(default_factory=list)  # (exchange ms, weight)
    banned_until_ms: int | None = None
    ban_requests: int = 0

    @property
    def now_ms(self) -> int:
        """The exchange's clock."""
        if self.fixed_now_ms is not None:
            return self.fixed_now_ms
        if self.accel_speed is not None:
            elapsed = time.monotonic() - self.accel_t0
            return self.accel_start_ms + int(elapsed * self.accel_speed * 1000)
        return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- helpers


def synthetic_candles(
    n: int,
    *,
    start_ms: int,
    timeframe: str = "1h",
    start_price: float = 100.0,
    seed: int = 0,
) -> pd.DataFrame:
    """``n`` consistent candles (a random walk) from ``start_ms``, as a frame of CANDLE_COLUMNS.

    Prices have 2 decimals and volumes 4, so they survive Binance's 8-decimal strings exactly.
    """
    rng = np.random.default_rng(seed)
    step = timeframe_ms(timeframe)
    closes = start_price * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    opens = np.concatenate(([start_price], closes[:-1]))
    opens, closes = np.round(opens, 2), np.round(closes, 2)
    wick = np.abs(rng.normal(0.0, 0.004, (2, n)))
    high = np.maximum(
        np.round(np.maximum(opens, closes) * (1 + wick[0]), 2), np.maximum(opens, closes)
    )
    low = np.minimum(
        np.round(np.minimum(opens, closes) * (1 - wick[1]), 2), np.minimum(opens, closes)
    )
    return pd.DataFrame(
        {
            "open_time": start_ms + step * np.arange(n, dtype="int64"),
            "open": opens,
            "high": high,
            "low": np.maximum(low, 0.01),
            "close": closes,
            "volume": np.round(rng.uniform(1.0, 500.0, n), 4),
        }
    )


def _as_rows(candles: pd.DataFrame | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    if isinstance(candles, pd.DataFrame):
        candles = candles[CANDLE_COLUMNS].to_numpy(dtype="float64")
    rows = np.asarray(candles, dtype="float64").reshape(-1, 6)
    return rows[np.argsort(rows[:, 0], kind="stable")]


def _num(value: float) -> str:
    """Binance-style decimal text (8 decimals) when exact, else the shortest exact text."""
    text = f"{value:.8f}"
    return text if float(text) == value else repr(float(value))


def _split_symbol(symbol: str) -> tuple[str, str]:
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot split {symbol!r} into base and quote; use add_market()")


# --------------------------------------------------------------------------- server


class FakeBinance(TradingMixin):
    """The fake exchange server. Use as ``async with FakeBinance() as fake``."""

    def __init__(
        self,
        symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT"),
        *,
        now_ms: int | None = None,
        tls: bool = True,
    ) -> None:
        self.tls = tls
        self.ca_file: str | None = None
        self.client_ssl: ssl.SSLContext | None = None
        """An SSL context trusting the fake's authority, for raw requests to :attr:`url`."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.state = ExchangeState(fixed_now_ms=now_ms)
        for symbol in symbols:
            self.add_market(symbol)
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/api/v3/ping"): self._ping,
            ("GET", "/api/v3/time"): self._time,
            ("GET", "/api/v3/exchangeInfo"): self._exchange_info,
            ("GET", "/api/v3/klines"): self._klines,
            ("GET", "/api/v3/ticker/24hr"): self._ticker,
            ("GET", "/api/v3/ticker/price"): self._ticker,
        }
        self.routes.update(self._init_trading())
        self.weight_limit: int | None = None
        self._sockets: dict[web.WebSocketResponse, _Socket] = {}
        self._socket_changed = asyncio.Event()
        self.ws_paths: list[str] = []
        """Path and query of every websocket connection, in order."""
        self.pongs = 0
        """Pong frames received (answers to :meth:`ping_websockets`)."""
        self.kline_messages = 0
        """Kline messages sent (one per socket)."""
        self._auto_interval: str | None = None
        self._auto_task: asyncio.Future[None] | None = None
        self._published: dict[str, int] = {}
        self._publish_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.url = ""

    # ---- lifecycle

    async def __aenter__(self) -> FakeBinance:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._closing.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        server_ssl = self._make_tls() if self.tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        return self

    def _make_tls(self) -> ssl.SSLContext:
        """A throwaway authority and a certificate for ``testnet.binance.vision`` and 127.0.0.1."""
        authority = trustme.CA()
        certificate = authority.issue_cert(HOST, "127.0.0.1")
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(server)
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-binance-")
        self.ca_file = f"{self._tmp.name}/ca.pem"
        authority.cert_pem.write_to_path(self.ca_file)
        self.client_ssl = ssl.create_default_context(cafile=self.ca_file)
        return server

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # ends injected delays still in progress
        if self._auto_task is not None:
            self._auto_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auto_task
            self._auto_task = None
        await self.drop_websockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def exchange_config(self, **overrides: Any) -> ExchangeConfig:
        """An :class:`ExchangeConfig` aimed at this fake: no client throttling, 5 s timeout;
        over TLS as ``testnet.binance.vision`` (resolved to 127.0.0.1, its authority trusted)."""
        values: dict[str, Any] = {"api_url": self.url, "rate_limit": False, "timeout_ms": 5_000}
        if self.tls:
            values |= {
                "api_url": f"https://{HOST}:{self.port}",
                "resolve": {HOST: "127.0.0.1"},
                "ca_file": self.ca_file,
            }
        return ExchangeConfig(**(values | overrides))

    # ---- state

    @property
    def now_ms(self) -> int:
        """The exchange's clock (wall time unless set)."""
        return self.state.now_ms

    @now_ms.setter
    def now_ms(self, value: int | None) -> None:
        self.state.fixed_now_ms = None if value is None else int(value)
        self.state.accel_speed = None

    def accelerate(self, start_ms: int, speed: float) -> None:
        """Run the clock from ``start_ms``, ``speed`` times faster than real time."""
        self.state.fixed_now_ms = None
        self.state.accel_start_ms, self.state.accel_speed = int(start_ms), float(speed)
        self.state.accel_t0 = time.monotonic()

    def advance(self, ms: int) -> int:
        """Move the clock ``ms`` forward (a fixed or accelerated one; wall time is fixed first)
        and return the new time."""
        if self.state.fixed_now_ms is None and self.state.accel_speed is not None:
            self.state.accel_start_ms += int(ms)
        else:
            self.state.fixed_now_ms = self.now_ms + int(ms)
        return self.now_ms

    @property
    def used_weight(self) -> int:
        """Request weight used in the current minute of the exchange's clock (Binance counts
        per calendar minute: the count starts again at each minute)."""
        start = self.now_ms // WEIGHT_WINDOW_MS * WEIGHT_WINDOW_MS
        self.state.weights = [w for w in self.state.weights if w[0] >= start]
        return sum(weight for ts, weight in self.state.weights if ts <= self.now_ms)

    def ban(self, seconds: float) -> None:
        """An IP ban of ``seconds`` from now: every request gets a 418, and extends the ban."""
        self.state.banned_until_ms = self.now_ms + int(seconds * 1000)

    @property
    def requests_during_ban(self) -> int:
        """Requests that arrived while an IP ban was in force."""
        return self.state.ban_requests

    def add_market(self, symbol: str, **spec: Any) -> MarketSpec:
        """List a spot market (``base``/``quote`` guessed from common quote assets if absent)."""
        if "base" not in spec or "quote" not in spec:
            spec["base"], spec["quote"] = _split_symbol(symbol)
        market = MarketSpec(symbol=symbol, **spec)
        self.state.markets[symbol] = market
        return market

    def set_candles(
        self,
        symbol: str,
        interval: str,
        candles: pd.DataFrame | Sequence[Sequence[float]] | np.ndarray,
    ) -> None:
        """Replace the candles of ``symbol`` at ``interval`` (rows open_time, o, h, l, c, v)."""
        if interval not in INTERVALS:
            raise ValueError(f"interval {interval!r} is not one of {INTERVALS}")
        if symbol not in self.state.markets:
            self.add_market(symbol)
        self.state.candles[(symbol, interval)] = _as_rows(candles)

    def candles(self, symbol: str, interval: str) -> pd.DataFrame:
        """The candles the exchange holds, as a frame of CANDLE_COLUMNS (open_time int64)."""
        rows = self.state.candles.get((symbol, interval), np.empty((0, 6)))
        frame = pd.DataFrame(rows, columns=CANDLE_COLUMNS)
        return frame.astype({"open_time": "int64"})

    def upsert_candle(self, symbol: str, interval: str, candle: Sequence[float]) -> None:
        """Add or replace one candle (by open time)."""
        rows = self.state.candles.get((symbol, interval), np.empty((0, 6)))
        rows = rows[rows[:, 0] != float(candle[0])]
        self.set_candles(symbol, interval, np.vstack([rows, np.asarray(candle, dtype="float64")]))

    # ---- faults and request log

    def inject(
        self,
        path: str,
        status: int | None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int | None = 1,
        *,
        after: int = 0,
        delay_s: float = 0.0,
        processed: bool = False,
    ) -> Fault:
        """Answer the next ``times`` requests to ``path`` (after ``after`` normal ones) with
        ``status``, ``body`` (dict: JSON, str: text; default Binance's body for the status: a
        -1003 for 429, a ban for 418, ``Service Unavailable`` text for 5xx) and ``headers``
        (a 429/418 carries ``Retry-After`` unless given: 1 s and 120 s), after waiting
        ``delay_s``. ``processed``: the request is handled first (an order is placed) and only
        its answer replaced. ``status=None`` only delays. ``times=None`` keeps the fault until
        :meth:`clear_faults`. ``path`` may name a method too (``"POST /api/v3/order"``)."""
        fault = Fault(status, body, headers, times, after, delay_s, processed)
        self.state.faults.setdefault(path, []).append(fault)
        return fault

    def inject_code(
        self,
        path: str,
        code: int,
        *,
        status: int = 503,
        times: int | None = 1,
        processed: bool = False,
        after: int = 0,
    ) -> Fault:
        """Answer with Binance's JSON error ``code`` and its real message (a 5xx by default:
        -1007 "execution status unknown", -1008 "server busy", -1001 internal error)."""
        body = {"code": code, "msg": MESSAGES.get(code, "An unknown error occurred.")}
        return self.inject(path, status, body, times=times, processed=processed, after=after)

    def delay(self, path: str, seconds: float, times: int | None = 1, *, after: int = 0) -> Fault:
        """Hold the next ``times`` requests to ``path`` for ``seconds``, then answer normally."""
        return self.inject(path, None, times=times, after=after, delay_s=seconds)

    def clear_faults(self, path: str | None = None) -> None:
        """Remove the injected faults of ``path`` (all paths when ``None``)."""
        if path is None:
            self.state.faults.clear()
        else:
            self.state.faults.pop(path, None)

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Requests received (to ``path`` only, when given), oldest first."""
        return [r for r in self.state.requests if path is None or r.path == path]

    def count(self, path: str) -> int:
        """Number of requests received for ``path``."""
        return sum(1 for r in self.state.requests if r.path == path)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler`` (faults and the request log still apply)."""
        self.routes[(method.upper(), path)] = handler

    # ---- dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if self._auto_interval is not None:  # the exchange pushes a close before it tells it
            await self.publish_klines()
        body = await request.text()
        self.state.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                time.time_ns() // 1_000_000,
                body,
            )
        )
        self.state.weights.append((self.now_ms, self._weight(request)))
        response = await self._answer(request)
        if not response.prepared:
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.used_weight)
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        banned = self._banned_answer()
        if banned is not None:
            return banned
        self.match_orders()  # resting limit orders fill lazily, whenever a request arrives
        fault = self._next_fault(f"{request.method} {request.path}")
        fault = fault or self._next_fault(request.path)
        if fault is not None:
            if fault.delay_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.delay_s)
            if fault.status is not None and not fault.processed:
                return self._fault_response(fault)
        if self.weight_limit is not None and self.used_weight > self.weight_limit:
            msg = MESSAGES[-1003].format(limit=self.weight_limit)
            wait = WEIGHT_WINDOW_MS - self.now_ms % WEIGHT_WINDOW_MS
            return web.json_response(
                {"code": -1003, "msg": msg},
                status=429,
                headers={"Retry-After": str(max(1, -(-wait // 1000)))},
            )
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.Response(
                status=404, text=f"fake Binance: no route {request.method} {request.path}"
            )
        answer = await handler(request)
        if fault is not None and fault.status is not None:  # processed: only the answer is lost
            return self._fault_response(fault)
        return answer

    def _banned_answer(self) -> web.Response | None:
        """During an IP ban every request is refused with 418, and extends the ban."""
        until = self.state.banned_until_ms
        if until is None:
            return None
        now = self.now_ms
        if now >= until:
            self.state.banned_until_ms = None
            return None
        self.state.ban_requests += 1
        until = self.state.banned_until_ms = until + 60_000  # each request extends the ban
        return web.json_response(
            {"code": -1003, "msg": MESSAGES[418].format(until=until)},
            status=418,
            headers={"Retry-After": str(-(-(until - now) // 1000))},
        )

    @staticmethod
    def _weight(request: web.Request) -> int:
        if request.path == "/api/v3/openOrders":
            return 6 if request.query.get("symbol") else 80
        return WEIGHTS.get((request.method, request.path), 1)

    def _next_fault(self, path: str) -> Fault | None:
        faults = self.state.faults.get(path, [])
        for fault in faults:
            if fault.times is not None and fault.times <= 0:
                continue
            if fault.after > 0:
                fault.after -= 1
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault
        return None

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        status = int(fault.status or 500)
        body = fault.body
        headers = dict(fault.headers or {})
        if status in (418, 429) and not any(k.lower() == "retry-after" for k in headers):
            headers["Retry-After"] = "1" if status == 429 else "120"
        if body is None:
            if status == 429:
                body = {"code": -1003, "msg": MESSAGES[-1003].format(limit=6000)}
            elif status == 418:
                body = {"code": -1003, "msg": MESSAGES[418].format(until=0)}
            elif status >= 500:
                body = "Service Unavailable"
            else:
                body = {"code": -1000, "msg": "An unknown error occurred."}
        if isinstance(body, dict | list):
            return web.json_response(body, status=status, headers=headers)
        return web.Response(status=status, text=str(body), headers=headers)

    # ---- REST endpoints

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.now_ms})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms,
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 6000,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "SECOND",
                        "intervalNum": 10,
                        "limit": 100,
                    },
                ],
                "exchangeFilters": [],
                "symbols": [_symbol_info(m) for m in self.state.markets.values()],
            }
        )

    async def _ticker(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.state.markets:
            return binance_error(400, -1121, "Invalid symbol.")
        price = self.price(symbol)
        if price is None:
            return binance_error(400, -1121, "Invalid symbol.")
        text = _num(price)
        if request.path.endswith("/price"):
            return web.json_response({"symbol": symbol, "price": text})
        now = self.now_ms
        return web.json_response(
            {
                "symbol": symbol,
                "priceChange": "0.00000000",
                "priceChangePercent": "0.000",
                "weightedAvgPrice": text,
                "prevClosePrice": text,
                "lastPrice": text,
                "lastQty": "1.00000000",
                "bidPrice": text,
                "bidQty": "1.00000000",
                "askPrice": text,
                "askQty": "1.00000000",
                "openPrice": text,
                "highPrice": text,
                "lowPrice": text,
                "volume": "0.00000000",
                "quoteVolume": "0.00000000",
                "openTime": now - 86_400_000,
                "closeTime": now,
                "firstId": 1,
                "lastId": 1,
                "count": 1,
            }
        )

    async def _klines(self, request: web.Request) -> web.Response:
        query = request.query
        symbol = query.get("symbol", "")
        interval = query.get("interval", "")
        if symbol not in self.state.markets:
            return binance_error(400, -1121, "Invalid symbol.")
        if interval not in INTERVALS:
            return binance_error(400, -1120, "Invalid interval.")
        try:
            limit = int(query.get("limit", KLINES_DEFAULT_LIMIT))
            start = int(query["startTime"]) if "startTime" in query else None
            end = int(query["endTime"]) if "endTime" in query else None
        except ValueError:
            return binance_error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= KLINES_MAX_LIMIT:
            return binance_error(400, -1130, "Data sent for parameter 'limit' is not valid.")
        rows = self.state.candles.get((symbol, interval), np.empty((0, 6)))
        times = rows[:, 0]
        last = self.now_ms if end is None else min(end, self.now_ms)
        hi = int(np.searchsorted(times, last, side="right"))
        if start is not None:
            lo = int(np.searchsorted(times, start, side="left"))
            selected = rows[lo:hi][:limit]
        else:
            selected = rows[:hi][-limit:]
        step = timeframe_ms(interval)
        return web.json_response([_kline_row(r, step) for r in selected])

    # ---- websocket

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        # Pongs are counted, so pings are answered here rather than by aiohttp.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.ws_paths.append(request.path_qs)
        # /stream?streams=a/b is Binance's combined stream (payloads wrapped in {"stream",
        # "data"}); /ws/<stream> subscribes in the URL, as the raw stream endpoint does.
        combined = request.query.get("streams")
        tail = request.path.rstrip("/").rsplit("/", 1)[-1]
        if combined is not None:
            streams = {name for name in combined.split("/") if name}
        else:
            streams = {tail} if "@" in tail else set()
        socket = _Socket(streams, combined is not None, self.now_ms)
        self._sockets[ws] = socket
        self._socket_changed.set()
        try:
            async for message in ws:
                if message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type == WSMsgType.PONG:
                    self.pongs += 1
                    self._socket_changed.set()
                elif message.type == WSMsgType.TEXT:
                    await self._ws_command(ws, message.data)
        finally:
            self._sockets.pop(ws, None)
            self._socket_changed.set()
        return ws

    async def _ws_command(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            command = json.loads(text)
            method, ident = command.get("method"), command.get("id")
        except (ValueError, AttributeError):
            await ws.send_json({"error": {"code": 3, "msg": "Invalid JSON"}})
            return
        socket = self._sockets.get(ws)
        if socket is None:
            return
        streams = socket.streams
        params = [str(p) for p in command.get("params") or []]
        if method == "SUBSCRIBE":
            streams.update(params)
            self._socket_changed.set()
            await ws.send_json({"result": None, "id": ident})
        elif method == "UNSUBSCRIBE":
            streams.difference_update(params)
            await ws.send_json({"result": None, "id": ident})
        elif method == "LIST_SUBSCRIPTIONS":
            await ws.send_json({"result": sorted(streams), "id": ident})
        else:
            await ws.send_json(
                {"error": {"code": 2, "msg": f"Invalid request: {method}"}, "id": ident}
            )

    def subscribers(self, stream: str) -> int:
        """Open sockets subscribed to ``stream`` (e.g. ``btcusdt@kline_1m``)."""
        return sum(1 for ws, s in self._sockets.items() if stream in s.streams and not ws.closed)

    @property
    def connections(self) -> int:
        """Websocket connections accepted so far."""
        return len(self.ws_paths)

    async def wait_subscribed(self, stream: str, count: int = 1, timeout: float = 5.0) -> None:
        """Return once ``count`` open sockets subscribe to ``stream`` (``TimeoutError`` if not)."""
        await self.wait_sockets(lambda: self.subscribers(stream) >= count, timeout)

    async def wait_sockets(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``condition()`` holds; it is checked whenever a socket opens, closes,
        subscribes or answers a ping (``TimeoutError`` after ``timeout``: a hang guard)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._socket_changed.clear()
                await self._socket_changed.wait()

    async def push_kline(
        self,
        symbol: str,
        interval: str,
        candle: Sequence[float],
        closed: bool = False,
        *,
        event_ms: int | None = None,
        store: bool = True,
    ) -> int:
        """Send ``candle`` (open_time, o, h, l, c, v) as a kline event to every socket subscribed
        to ``<symbol>@kline_<interval>``; ``closed`` sets Binance's ``x``, ``event_ms`` its event
        time ``E`` (default: the exchange's clock). ``store`` also keeps the candle for REST
        (``False`` replays an old message, a duplicate, without touching what REST answers).
        Stalled sockets get nothing. Returns the number of sockets it was sent to."""
        if store:
            self.upsert_candle(symbol, interval, candle)
        t, o, h, low, c, v = (float(x) for x in candle)
        stream = f"{symbol.lower()}@kline_{interval}"
        event = {
            "e": "kline",
            "E": self.now_ms if event_ms is None else int(event_ms),
            "s": symbol,
            "k": {
                "t": int(t),
                "T": int(t) + timeframe_ms(interval) - 1,
                "s": symbol,
                "i": interval,
                "f": 100,
                "L": 200,
                "o": _num(o),
                "c": _num(c),
                "h": _num(h),
                "l": _num(low),
                "v": _num(v),
                "n": 101,
                "x": bool(closed),
                "q": _num(round(v * c, 8)),
                "V": _num(round(v / 2, 8)),
                "Q": _num(round(v * c / 2, 8)),
                "B": "0",
            },
        }
        sent = 0
        for ws, socket in list(self._sockets.items()):
            if stream not in socket.streams or ws.closed or socket.stalled:
                continue
            payload = {"stream": stream, "data": event} if socket.combined else event
            try:
                await ws.send_str(json.dumps(payload))
            except ConnectionError:  # closing under our feet: the client reconnects
                continue
            sent += 1
        self.kline_messages += sent
        return sent

    async def drop_websockets(self, code: int = 1001) -> None:
        """Close every websocket (clients see the connection drop and must reconnect)."""
        sockets = list(self._sockets)
        self._sockets.clear()
        self._socket_changed.set()
        for ws in sockets:
            if not ws.closed:
                await ws.close(code=code, message=b"fake Binance dropped the connection")

    async def expire_websockets(self, max_age_ms: int = WS_MAX_AGE_MS) -> int:
        """Close the sockets open for ``max_age_ms`` or more of the exchange's clock, as Binance
        closes every connection after 24 hours; returns how many."""
        old = [
            ws
            for ws, socket in self._sockets.items()
            if self.now_ms - socket.opened_ms >= max_age_ms and not ws.closed
        ]
        for ws in old:
            self._sockets.pop(ws, None)
            await ws.close(code=1001, message=b"24 hour connection limit")
        self._socket_changed.set()
        return len(old)

    def stall_websockets(self) -> int:
        """The open sockets stay open but receive nothing more (a stalled stream: a client
        must notice the silence itself); new connections are served. Returns how many."""
        for socket in self._sockets.values():
            socket.stalled = True
        return len(self._sockets)

    async def ping_websockets(self) -> int:
        """Send a ping frame to every open socket, as Binance does every 20 s (it closes a
        connection that sends no pong within a minute); :attr:`pongs` counts the answers.
        Returns the number of pings sent."""
        sent = 0
        for ws, socket in list(self._sockets.items()):
            if not ws.closed and not socket.stalled:
                await ws.ping(b"fake-binance")
                sent += 1
        return sent

    # ---- klines pushed as the clock moves

    def stream_klines(self, interval: str, *, tick_s: float = 0.002) -> None:
        """Push every subscribed candle of ``interval`` when the exchange's clock passes its
        close (``x`` true, ``E`` the clock), as Binance does, plus one update when a candle
        opens. Pushes go out before any REST request is answered and every ``tick_s`` (for an
        accelerated clock), so a client that learns a close from REST has had its push.
        A stream's pushes start at the candle forming when it is first seen subscribed."""
        self._auto_interval = interval
        if self._auto_task is None:
            self._auto_task = asyncio.ensure_future(self._auto_loop(tick_s))

    async def _auto_loop(self, tick_s: float) -> None:
        while not self._closing.is_set():
            await self.publish_klines()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), tick_s)

    async def publish_klines(self) -> int:
        """Push what :meth:`stream_klines` owes the subscribers now; returns the messages."""
        interval = self._auto_interval
        if interval is None:
            return 0
        async with self._publish_lock:
            step = timeframe_ms(interval)
            now = self.now_ms
            forming = now - now % step
            pushed = 0
            wanted = {stream for s in self._sockets.values() for stream in s.streams}
            for symbol in list(self.state.markets):
                stream = f"{symbol.lower()}@kline_{interval}"
                if stream not in wanted:
                    continue
                rows = self.state.candles.get((symbol, interval))
                if rows is None or not len(rows):
                    continue
                start = self._published.setdefault(stream, forming)
                if start > forming:
                    continue
                times = rows[:, 0]
                lo = int(np.searchsorted(times, start, side="left"))
                hi = int(np.searchsorted(times, forming, side="right"))
                for row in rows[lo:hi]:
                    t = int(row[0])
                    closed = t + step <= now
                    if closed or t >= self._published.get(stream + "#open", -1):
                        pushed += await self.push_kline(
                            symbol, interval, row.tolist(), closed, store=False
                        )
                    if closed:
                        self._published[stream] = t + step
                    else:
                        self._published[stream + "#open"] = t + 1
            return pushed


def _kline_row(row: np.ndarray, step: int) -> list[Any]:
    t, o, h, low, c, v = (float(x) for x in row)
    return [
        int(t),
        _num(o),
        _num(h),
        _num(low),
        _num(c),
        _num(v),
        int(t) + step - 1,
        _num(round(v * c, 8)),
        100,
        _num(round(v / 2, 8)),
        _num(round(v * c / 2, 8)),
        "0",
    ]


def _symbol_info(market: MarketSpec) -> dict[str, Any]:
    return {
        "symbol": market.symbol,
        "status": market.status,
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": market.tick_size,
                "maxPrice": "1000000.00000000",
                "tickSize": market.tick_size,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": market.min_qty,
                "maxQty": "9000.00000000",
                "stepSize": market.step_size,
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": market.min_notional,
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": market.market_max_qty,
                "stepSize": "0.00000000",
            },
            {
                "filterType": "PERCENT_PRICE_BY_SIDE",
                "bidMultiplierUp": market.percent_up,
                "bidMultiplierDown": market.percent_down,
                "askMultiplierUp": market.percent_up,
                "askMultiplierDown": market.percent_down,
                "avgPriceMins": 5,
            },
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }
