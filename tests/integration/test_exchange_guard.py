"""The request guard and ccxt's error mapping, against the fake Binance served as the testnet.

ccxt applies Binance's spot error table only to URLs on the real hosts: these tests prove the
fake is reached so that every error gets the class it would get from ``testnet.binance.vision``,
that the guard keeps the request weight under the limit without a 429, and that a refused key
is recognised by its code whatever class ccxt gave it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ccxt
import pytest

from bot.feed.exchange import create_exchange, is_temporary
from bot.feed.guard import CredentialsRejected, GuardClock
from bot.timeframes import MINUTE_MS
from tests.fakes.binance import FakeBinance, synthetic_candles

KEY, SECRET = "guard-key-0123456789", "guard-secret-0123456789"
T0 = 1_709_251_200_000
BTC = "BTC/USDT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(("BTCUSDT",), now_ms=T0) as server:
        server.add_account(KEY, SECRET, {"USDT": 1_000.0})
        server.timestamp_clock = None  # the exchange's clock is driven; ccxt signs with the wall
        server.set_candles(
            "BTCUSDT", "1m", synthetic_candles(300, start_ms=T0 - 300 * MINUTE_MS, timeframe="1m")
        )
        yield server


@pytest.fixture
async def exchange(fake: FakeBinance) -> AsyncIterator[Any]:
    ex = create_exchange(fake.exchange_config(), fake.secrets(KEY))
    ex.timeout_on_exit = 0
    yield ex
    await ex.close()


def real_host_class(code: int, message: str) -> type[BaseException]:
    """The class ccxt raises for ``{"code": code}`` from the real testnet host."""
    ex = ccxt.binance()
    body = f'{{"code":{code},"msg":"{message}"}}'
    try:
        ex.handle_errors(
            400, "Bad Request", "https://testnet.binance.vision/api/v3/order", "POST", {},
            body, ex.parse_json(body), {}, "",
        )  # fmt: skip
    except ccxt.BaseError as exc:
        return type(exc)
    raise AssertionError(f"ccxt raised nothing for {code}")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (-1008, "Server is currently overloaded with other requests."),
        (-1004, "Server is busy, please wait and try again"),
        (-1131, "recvWindow must be less than 60000"),
        (-2016, "No trading window could be found for the symbol. Try ticker/24hrs instead."),
        (-2026, "Order was canceled or expired with no executed qty over 90 days ago."),
    ],
)
async def test_errors_through_the_fake_get_the_class_of_the_real_host(
    fake: FakeBinance, exchange: Any, code: int, message: str
) -> None:
    fake.inject("POST /api/v3/order", 400, {"code": code, "msg": message})
    with pytest.raises(ccxt.BaseError) as raised:
        await exchange.create_order(BTC, "market", "buy", 0.1)
    assert type(raised.value) is real_host_class(code, message)


async def test_server_busy_is_temporary_as_on_the_real_host(
    fake: FakeBinance, exchange: Any
) -> None:
    fake.inject_code("POST /api/v3/order", -1008, status=503)
    with pytest.raises(ccxt.OperationFailed) as raised:
        await exchange.create_order(BTC, "market", "buy", 0.1)
    assert is_temporary(raised.value)
    async with FakeBinance(("BTCUSDT",), now_ms=T0, tls=False) as plain:  # the old way
        plain.inject_code("POST /api/v3/order", -1008, status=503)
        plain.add_account(KEY, SECRET, {"USDT": 1_000.0})
        plain.timestamp_clock = None
        ex = create_exchange(plain.exchange_config(), plain.secrets(KEY))
        ex.timeout_on_exit = 0
        try:
            with pytest.raises(ccxt.ExchangeError) as plain_raised:
                await ex.create_order(BTC, "market", "buy", 0.1)
            # on 127.0.0.1 the same answer would be a permanent error: never retried
            assert not is_temporary(plain_raised.value)
        finally:
            await ex.close()


async def test_the_guard_keeps_the_weight_under_the_limit_without_a_429(
    fake: FakeBinance,
) -> None:
    async def next_minute(ms: int) -> None:
        fake.advance(ms)  # the guard waits on the exchange's clock: the fake's, driven here

    clock = GuardClock(now_ms=lambda: fake.now_ms, sleep_ms=next_minute)
    config = fake.exchange_config(weight_limit=100, weight_headroom=0.8)
    ex = create_exchange(config, fake.secrets(KEY), guard_clock=clock)
    ex.timeout_on_exit = 0
    fake.weight_limit = 100  # past 100 in a minute the exchange answers 429
    try:
        await ex.load_markets()  # weight 20
        for _ in range(60):  # klines weigh 2: 120 more, over the limit within one minute
            await ex.fetch_ohlcv(BTC, "1m", limit=5)
    finally:
        await ex.close()
    assert ex.guard.bans == 0, "a 429 was met"
    assert ex.guard.weight_waits >= 1
    assert fake.now_ms >= T0 + MINUTE_MS  # it waited for the next minute


async def test_a_key_revoked_after_a_successful_call_is_recognised_by_its_code(
    fake: FakeBinance, exchange: Any
) -> None:
    await exchange.fetch_balance()  # ccxt now raises -2015 as DDoSProtection
    fake.revoke(KEY)
    with pytest.raises(CredentialsRejected) as raised:
        await exchange.fetch_balance()
    assert raised.value.code == -2015
    assert isinstance(raised.value.__cause__, ccxt.DDoSProtection)
    sent = len(fake.requests())
    with pytest.raises(CredentialsRejected, match="not sent"):  # never tried again
        await exchange.create_order(BTC, "market", "buy", 0.1)
    assert len(fake.requests()) == sent
    assert await exchange.fetch_time() > 0  # public endpoints still answer
