"""The fake Binance as a trading exchange, driven by the real ccxt async client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import ccxt
import pytest

from bot.feed.exchange import create_exchange
from bot.feed.guard import ExchangeBanned, GuardClock
from bot.timeframes import MINUTE_MS, to_ms
from config.schema import Secrets
from tests.fakes.binance import FakeBinance, sign, synthetic_candles

BTC = "BTC/USDT"
KEY, SECRET = "alice-key", "alice-secret"
T0 = to_ms("2024-03-01T12:00:00")


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance() as server:
        server.add_account(KEY, SECRET, {"USDT": 10_000.0, "BTC": 1.0})
        server.set_price("BTCUSDT", 100.0)
        yield server


class Clients:
    """Makes ccxt clients aimed at the fake and closes them all at the end."""

    def __init__(self, fake: FakeBinance) -> None:
        self.fake = fake
        self.made: list[Any] = []

    def __call__(self, key: str = KEY, secret: str = SECRET, **options: Any) -> Any:
        secrets = Secrets(exchange_api_key=key, exchange_secret=secret)
        ex = create_exchange(self.fake.exchange_config(), secrets)
        ex.options.update(options)
        ex.timeout_on_exit = 0  # ccxt sleeps 250 ms on close() to let TLS connections end
        self.made.append(ex)
        return ex

    async def close(self) -> None:
        for ex in self.made:
            await ex.close()


@pytest.fixture
async def clients(fake: FakeBinance) -> AsyncIterator[Clients]:
    made = Clients(fake)
    yield made
    await made.close()


@pytest.fixture
def exchange(clients: Clients) -> Any:
    return clients()


async def signed(
    fake: FakeBinance,
    method: str,
    path: str,
    params: dict[str, Any],
    secret: str = SECRET,
    *,
    timestamp: int | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A raw signed request, as Binance documents it (no ccxt in between)."""
    query = urlencode(params | {"timestamp": fake.now_ms if timestamp is None else timestamp})
    query += "&signature=" + sign(query, secret)
    headers = {"X-MBX-APIKEY": KEY}
    connector = aiohttp.TCPConnector(ssl=fake.client_ssl) if fake.client_ssl else None
    async with aiohttp.ClientSession(connector=connector) as http:
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            request = http.post(fake.url + path, data=query, headers=headers)
        else:
            request = http.request(method, f"{fake.url}{path}?{query}", headers=headers)
        async with request as response:
            return response.status, await response.json(), dict(response.headers)


async def test_market_orders_move_balances_and_charge_fees_in_the_received_asset(
    fake: FakeBinance, exchange: Any
) -> None:
    buy = await exchange.create_order(
        BTC, "market", "buy", 2.5, params={"newClientOrderId": "buy-1"}
    )
    fake.set_price("BTCUSDT", 120.0)
    sell = await exchange.create_order(
        BTC, "market", "sell", 1.0, params={"newClientOrderId": "sell-1"}
    )

    assert (buy["id"], buy["clientOrderId"], buy["status"]) == ("1", "buy-1", "closed")
    assert (buy["filled"], buy["average"], buy["cost"]) == (2.5, 100.0, 250.0)
    assert buy["fee"] == {"currency": "BTC", "cost": 0.0025}
    assert (sell["id"], sell["status"], sell["average"]) == ("2", "closed", 120.0)
    assert sell["fee"] == {"currency": "USDT", "cost": 0.12}
    expected = {"BTC": 1.0 + 2.5 - 0.0025 - 1.0, "USDT": 10_000 - 250 + 120 - 0.12}
    assert fake.balances(KEY) == pytest.approx(expected)
    balance = await exchange.fetch_balance()
    assert balance["total"] == pytest.approx(expected)
    assert balance["free"] == pytest.approx(expected)

    by_client_id = await exchange.fetch_order(None, BTC, params={"origClientOrderId": "buy-1"})
    by_id = await exchange.fetch_order("2", BTC)
    assert (by_client_id["id"], by_client_id["status"], by_client_id["filled"]) == (
        "1",
        "closed",
        2.5,
    )
    assert (by_id["clientOrderId"], by_id["side"], by_id["amount"]) == ("sell-1", "sell", 1.0)
    trades = await exchange.fetch_order_trades("1", BTC)
    assert [(t["price"], t["amount"], t["fee"]["cost"]) for t in trades] == [(100.0, 2.5, 0.0025)]
    assert [o["clientOrderId"] for o in fake.orders(KEY)] == ["buy-1", "sell-1"]
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.fetch_order(None, BTC, params={"origClientOrderId": "never-sent"})


async def test_limit_order_rests_locked_then_fills_at_its_limit_when_the_price_reaches_it(
    fake: FakeBinance, exchange: Any
) -> None:
    order = await exchange.create_order(BTC, "limit", "buy", 1.0, 95.0)
    assert (order["status"], order["filled"]) == ("open", 0.0)
    assert fake.locked(KEY) == {"USDT": 95.0}
    assert fake.free(KEY)["USDT"] == 10_000 - 95
    [listed] = await exchange.fetch_open_orders(BTC)
    assert (listed["id"], listed["price"], listed["remaining"]) == (order["id"], 95.0, 1.0)

    fake.set_price("BTCUSDT", 96.0)
    assert (await exchange.fetch_order(order["id"], BTC))["status"] == "open"
    fake.set_price("BTCUSDT", 90.0)
    filled = await exchange.fetch_order(order["id"], BTC)

    assert (filled["status"], filled["filled"], filled["cost"]) == ("closed", 1.0, 95.0)
    assert await exchange.fetch_open_orders(BTC) == []
    assert fake.locked(KEY) == {"USDT": 0.0}
    assert fake.balances(KEY) == pytest.approx({"BTC": 1.999, "USDT": 10_000 - 95})
    [trade] = await exchange.fetch_my_trades(BTC)
    assert (trade["price"], trade["takerOrMaker"]) == (95.0, "maker")


async def test_a_limit_that_crosses_fills_at_once_at_the_better_price(
    fake: FakeBinance, exchange: Any
) -> None:
    order = await exchange.create_order(BTC, "limit", "buy", 1.0, 110.0)
    assert (order["status"], order["average"]) == ("closed", 100.0)
    assert fake.balances(KEY)["USDT"] == pytest.approx(10_000 - 100)
    assert fake.locked(KEY) == {"USDT": 0.0}


async def test_cancel_unlocks_the_funds(fake: FakeBinance, exchange: Any) -> None:
    order = await exchange.create_order(
        BTC, "limit", "sell", 0.5, 150.0, params={"newClientOrderId": "ask"}
    )
    assert fake.locked(KEY) == {"BTC": 0.5}

    canceled = await exchange.cancel_order(order["id"], BTC)

    assert (canceled["id"], canceled["status"]) == (order["id"], "canceled")
    assert canceled["info"]["origClientOrderId"] == "ask"
    assert fake.balances(KEY) == {"BTC": 1.0, "USDT": 10_000.0}
    assert fake.free(KEY) == {"BTC": 1.0, "USDT": 10_000.0}
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.cancel_order(order["id"], BTC)
    assert (await exchange.fetch_order(None, BTC, {"origClientOrderId": "ask"}))["status"] == (
        "canceled"
    )


async def test_partial_fills_expire_market_orders_and_leave_limits_open(
    fake: FakeBinance, exchange: Any
) -> None:
    fake.partial_fills(0.4, times=2)

    market = await exchange.create_order(BTC, "market", "buy", 1.0)
    limit = await exchange.create_order(BTC, "limit", "buy", 1.0, 100.0)

    assert (market["status"], market["filled"], market["amount"]) == ("expired", 0.4, 1.0)
    assert market["info"]["status"] == "EXPIRED"
    assert (limit["status"], limit["filled"], limit["info"]["status"]) == (
        "open",
        0.4,
        "PARTIALLY_FILLED",
    )
    assert fake.locked(KEY)["USDT"] == pytest.approx(60.0)
    rest = await exchange.fetch_order(limit["id"], BTC)  # the rule is spent: the rest fills
    assert (rest["status"], rest["filled"]) == ("closed", 1.0)
    assert fake.balances(KEY) == pytest.approx({"BTC": 1.0 + 1.4 * 0.999, "USDT": 10_000 - 140})


async def test_rejections_map_to_ccxt_errors(
    fake: FakeBinance, exchange: Any, clients: Clients
) -> None:
    # Binance's -1013 is BadRequest in ccxt 4.5.90; only LOT_SIZE and PRICE_FILTER failures
    # (matched in the text) are InvalidOrder.
    with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
        await exchange.create_order(BTC, "market", "buy", 0.01)  # 1 USDT < 5
    with pytest.raises(ccxt.InsufficientFunds):
        await exchange.create_order(BTC, "market", "buy", 200.0)
    with pytest.raises(ccxt.InsufficientFunds):
        await exchange.create_order(BTC, "limit", "sell", 2.0, 100.0)
    fake.set_balance(KEY, "BTC", 2.0)
    await exchange.create_order(BTC, "limit", "sell", 2.0, 400.0)
    await exchange.create_order(BTC, "limit", "buy", 1.0, 50.0, {"newClientOrderId": "dup"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        await exchange.create_order(BTC, "limit", "buy", 1.0, 60.0, {"newClientOrderId": "dup"})
    with pytest.raises(ccxt.AuthenticationError):
        await clients(key="nobody").fetch_balance()
    with pytest.raises(ccxt.AuthenticationError):
        await clients(secret="wrong").create_order(BTC, "market", "buy", 1.0)

    outcomes = [(r.client_order_id, r.outcome, r.code) for r in fake.order_requests]
    assert [o[1:] for o in outcomes] == [
        ("rejected", -1013),
        ("rejected", -2010),
        ("rejected", -2010),
        ("accepted", None),
        ("accepted", None),
        ("rejected", -2010),
        ("rejected", -1022),
    ]
    assert [o["type"] for o in fake.orders()] == ["LIMIT", "LIMIT"]
    assert fake.locked(KEY) == {"BTC": 2.0, "USDT": 50.0}


async def test_filters_and_auth_errors_have_binance_codes(fake: FakeBinance) -> None:
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
    lot = await signed(
        fake, "POST", "/api/v3/order", order | {"quantity": "1.000001", "price": "100"}
    )
    tick = await signed(
        fake, "POST", "/api/v3/order", order | {"quantity": "1", "price": "100.001"}
    )
    bad_symbol = await signed(fake, "GET", "/api/v3/openOrders", {"symbol": "NOPEUSDT"})
    bad_sig = await signed(fake, "GET", "/api/v3/account", {}, secret="wrong")
    missing = await signed(fake, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 7})
    url = fake.url + "/api/v3/account?timestamp=1&signature=x"
    async with aiohttp.ClientSession() as http, http.get(url, ssl=fake.client_ssl) as response:
        no_key = (response.status, await response.json())

    assert lot[:2] == (400, {"code": -1013, "msg": "Filter failure: LOT_SIZE"})
    assert tick[:2] == (400, {"code": -1013, "msg": "Filter failure: PRICE_FILTER"})
    assert bad_symbol[:2] == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert bad_sig[:2] == (400, {"code": -1022, "msg": "Signature for this request is not valid."})
    assert missing[:2] == (400, {"code": -2013, "msg": "Order does not exist."})
    assert no_key == (
        401,
        {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
    )


async def test_market_and_limit_filters_client_ids_and_clock_errors_answer_as_binance(
    fake: FakeBinance,
) -> None:
    fake.state.markets["BTCUSDT"].market_max_qty = "2.00000000"
    market = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET"}
    limit = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC"}
    too_big = await signed(fake, "POST", "/api/v3/order", market | {"quantity": "3"})
    far = await signed(fake, "POST", "/api/v3/order", limit | {"quantity": "1", "price": "501"})
    bad_id = await signed(
        fake, "POST", "/api/v3/order", market | {"quantity": "1", "newClientOrderId": "a b"}
    )
    ahead = await signed(fake, "GET", "/api/v3/account", {}, timestamp=fake.now_ms + 1_500)
    late = await signed(fake, "GET", "/api/v3/account", {}, timestamp=fake.now_ms - 6_000)

    assert too_big[:2] == (400, {"code": -1013, "msg": "Filter failure: MARKET_LOT_SIZE"})
    assert far[:2] == (400, {"code": -1013, "msg": "Filter failure: PERCENT_PRICE_BY_SIDE"})
    assert bad_id[0] == 400 and bad_id[1]["code"] == -1100
    assert "newClientOrderId" in bad_id[1]["msg"]
    assert ahead[1] == {
        "code": -1021,
        "msg": "Timestamp for this request was 1000ms ahead of the server's time.",
    }
    assert late[1]["msg"] == "Timestamp for this request is outside of the recvWindow."
    assert fake.orders() == []


async def test_a_418_is_an_ip_ban_that_every_request_extends(fake: FakeBinance) -> None:
    fake.now_ms = T0
    fake.ban(120)
    status, body, headers = await signed(fake, "GET", "/api/v3/time", {})
    assert body["code"] == -1003 and "IP banned until" in body["msg"]
    # the request during the ban added a minute to it
    assert (status, headers["Retry-After"], fake.requests_during_ban) == (418, "180", 1)
    fake.advance(170_000)
    status, _, headers = await signed(fake, "GET", "/api/v3/account", {})
    assert (status, headers["Retry-After"], fake.requests_during_ban) == (418, "70", 2)
    fake.advance(70_000)
    assert (await signed(fake, "GET", "/api/v3/account", {}))[0] == 200


async def test_fees_are_paid_in_bnb_with_the_discount_when_the_account_holds_bnb(
    fake: FakeBinance, exchange: Any
) -> None:
    fake.add_market("BNBUSDT")
    fake.set_price("BNBUSDT", 200.0)
    fake.set_balance(KEY, "BNB", 1.0)
    order = await exchange.create_order(BTC, "market", "buy", 2.0)  # 200 USDT at 100
    [trade] = fake.trades(KEY)
    assert (trade["commissionAsset"], trade["commission"]) == ("BNB", "0.00075000")
    assert order["fee"] == {"currency": "BNB", "cost": 0.00075}
    balances = fake.balances(KEY)
    assert (balances["BTC"], balances["BNB"]) == (3.0, 0.99925)  # the whole 2 BTC arrived


async def test_timestamps_outside_the_recv_window_are_invalid_nonces(
    fake: FakeBinance, exchange: Any
) -> None:
    await exchange.load_markets()
    fake.now_ms = time.time_ns() // 1_000_000 + 60_000  # exchange a minute ahead of the client

    with pytest.raises(ccxt.InvalidNonce):
        await exchange.fetch_balance()
    fake.now_ms = time.time_ns() // 1_000_000 - 5_000  # client 5 s ahead: more than 1 s
    with pytest.raises(ccxt.InvalidNonce):
        await exchange.fetch_balance()


async def test_adjusting_for_time_difference_trades_on_a_fixed_clock_at_the_candle_price(
    fake: FakeBinance, clients: Clients
) -> None:
    fake.set_price("BTCUSDT", None)
    frame = synthetic_candles(10, start_ms=T0, timeframe="1m", start_price=100.0)
    fake.set_candles("BTCUSDT", "1m", frame)
    hours = synthetic_candles(3, start_ms=T0, start_price=50.0)
    fake.set_candles("BTCUSDT", "1h", hours)
    fake.now_ms = T0 + 3 * MINUTE_MS + 30_000
    exchange = clients(adjustForTimeDifference=True)

    order = await exchange.create_order(BTC, "market", "buy", 1.0)

    assert order["average"] == frame.open[3]  # the 1m candle open now, not the 1h one
    assert fake.price("BTCUSDT") == frame.open[3]
    fake.now_ms = T0 + 10 * MINUTE_MS + 1  # past the 1m candles: the 1h one open now
    assert fake.price("BTCUSDT") == hours.open[0]
    fake.now_ms = T0 + 3 * 60 * MINUTE_MS  # past every candle: the last 1m close
    assert fake.price("BTCUSDT") == frame.close.iloc[-1]
    fake.now_ms = T0 - 1
    assert fake.price("BTCUSDT") == frame.open[0]


async def test_injected_429_on_the_order_path_is_a_rate_limit_error(
    fake: FakeBinance, exchange: Any
) -> None:
    now = [1_000_000]
    exchange.guard.clock = GuardClock(now_ms=lambda: now[0])
    fake.inject("/api/v3/order", 429, headers={"Retry-After": "1"})

    # ccxt's binance raises DDoSProtection for any HTTP 418/429 (RateLimitExceeded only
    # for a -1003 code with another status); the guard makes it ExchangeBanned and keeps the
    # next request home until Retry-After has passed.
    with pytest.raises(ExchangeBanned) as first:
        await exchange.create_order(BTC, "market", "buy", 1.0)
    assert first.value.retry_after == 1.0
    assert fake.orders() == []
    requests = len(fake.requests())
    with pytest.raises(ExchangeBanned, match="not sent"):
        await exchange.create_order(BTC, "market", "buy", 1.0)
    assert len(fake.requests()) == requests
    now[0] += 1_000
    assert (await exchange.create_order(BTC, "market", "buy", 1.0))["status"] == "closed"


async def test_request_weight_is_reported_and_limited(fake: FakeBinance, exchange: Any) -> None:
    fake.timestamp_clock = None  # the exchange's clock is fixed below; ccxt signs with the wall's
    fake.now_ms = 1_709_251_230_000  # 30 s into a minute: weight counts per calendar minute
    await exchange.load_markets()  # exchangeInfo: 20
    await exchange.fetch_balance()  # account: 20
    assert exchange.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "40"
    await exchange.fetch_open_orders(BTC)  # 6
    assert fake.used_weight == 46

    fake.weight_limit = 50
    await exchange.fetch_time()  # 47
    with pytest.raises(ccxt.DDoSProtection):
        await exchange.fetch_balance()  # 67 > 50
    status, body, headers = await signed(fake, "GET", "/api/v3/account", {})
    # Retry-After: the seconds left until the minute's count starts again
    assert (status, body["code"], headers["Retry-After"]) == (429, -1003, "30")

    fake.advance(30_000)  # the next minute
    assert fake.used_weight == 0


async def test_order_hooks_run_at_each_stage(fake: FakeBinance, exchange: Any) -> None:
    seen: list[tuple[str, Any]] = []

    async def slow_hook(stage: str, info: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        seen.append((stage, info.get("client_order_id")))

    fake.on_order(slow_hook)
    fake.on_order(
        lambda stage, info: seen.append((stage + "!", info.get("order", {}).get("status")))
    )

    await exchange.create_order(BTC, "market", "buy", 1.0, params={"newClientOrderId": "h1"})
    with pytest.raises(ccxt.InsufficientFunds):
        await exchange.create_order(BTC, "market", "buy", 500.0, params={"newClientOrderId": "h2"})

    assert seen == [
        ("received", "h1"),
        ("received!", None),
        ("processed", "h1"),
        ("processed!", "FILLED"),
        ("received", "h2"),
        ("received!", None),
        ("rejected", "h2"),
        ("rejected!", None),
    ]


async def test_accelerate_runs_the_exchange_clock_faster(fake: FakeBinance, exchange: Any) -> None:
    fake.accelerate(T0, speed=600.0)  # ten minutes per second

    first = await exchange.fetch_time()
    await asyncio.sleep(0.05)
    second = await exchange.fetch_time()

    assert T0 <= first < T0 + 60_000
    assert second - first >= 29_000
    fake.now_ms = None
    assert abs(fake.now_ms - time.time_ns() // 1_000_000) < 1_000


async def test_trading_on_an_accelerated_clock_with_wall_clock_timestamps(
    fake: FakeBinance, exchange: Any
) -> None:
    fake.set_price("BTCUSDT", None)
    frame = synthetic_candles(600, start_ms=T0, timeframe="1m")
    fake.set_candles("BTCUSDT", "1m", frame)
    fake.accelerate(T0 + 100 * MINUTE_MS, speed=60.0)  # a minute per second
    fake.timestamp_clock = "wall"  # ccxt signs with its own (wall) clock

    order = await exchange.create_order(BTC, "market", "buy", 1.0)

    minute = (order["timestamp"] - T0) // MINUTE_MS
    assert 100 <= minute < 110
    assert order["average"] == frame.open[minute]
    fake.timestamp_clock = "exchange"
    with pytest.raises(ccxt.InvalidNonce):
        await exchange.fetch_balance()


async def test_an_order_booked_while_the_client_times_out_is_still_on_the_exchange(
    fake: FakeBinance,
) -> None:
    ex = create_exchange(fake.exchange_config(timeout_ms=100), fake.secrets(KEY))
    ex.timeout_on_exit = 0
    booked = asyncio.Event()

    async def stall(stage: str, info: dict[str, Any]) -> None:
        if stage == "processed":  # booked, answer not yet written: the client gives up
            booked.set()
            await asyncio.sleep(0.3)

    fake.on_order(stall)
    fake.inject("GET /api/v3/order", 503, times=1)  # POST and DELETE are not faulted
    try:
        with pytest.raises(ccxt.RequestTimeout):
            await ex.create_order(BTC, "market", "buy", 1.0, params={"newClientOrderId": "lost"})
        assert booked.is_set()
        fake.clear_order_hooks()
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await ex.fetch_order(None, BTC, params={"origClientOrderId": "lost"})
        found = await ex.fetch_order(None, BTC, params={"origClientOrderId": "lost"})
    finally:
        await ex.close()

    assert (found["status"], found["filled"]) == ("closed", 1.0)
    assert [(r.client_order_id, r.outcome) for r in fake.order_requests] == [("lost", "accepted")]
