"""Downloading candles through the real ccxt client from the fake Binance into ``market.db``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ccxt
import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from bot.feed.exchange import create_exchange
from bot.feed.history import DownloadError, download_candles
from bot.feed.validation import DataValidationError
from bot.store import MarketStore
from bot.timeframes import HOUR_MS, to_ms
from config.schema import ExchangeConfig, Secrets
from tests.fakes.binance import FakeBinance, synthetic_candles

START = to_ms("2024-01-01")
KLINES = "/api/v3/klines"
SYMBOL = "BTC/USDT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance() as server:
        yield server


@pytest.fixture
async def exchange(fake: FakeBinance) -> AsyncIterator[Any]:
    ex = create_exchange(fake.exchange_config())
    ex.timeout_on_exit = 0  # ccxt sleeps 250 ms on close() for TLS; plain HTTP here
    yield ex
    await ex.close()


def given_candles(fake: FakeBinance, n: int, *, open_extra: int = 1) -> pd.DataFrame:
    """``n`` closed 1h BTCUSDT candles plus ``open_extra`` more, the exchange clock inside the
    first of those (so it is still open)."""
    frame = synthetic_candles(n + open_extra, start_ms=START, timeframe="1h")
    fake.set_candles("BTCUSDT", "1h", frame)
    fake.now_ms = START + n * HOUR_MS + 30 * 60_000
    return frame.iloc[:n].reset_index(drop=True)


async def download(exchange: Any, store: MarketStore, **kw: Any) -> Any:
    params: dict[str, Any] = {
        "exchange_name": "binance",
        "symbol": SYMBOL,
        "timeframe": "1h",
        "since_ms": START,
        "max_retries": 3,
        "base_delay_s": 0.001,
    }
    return await download_candles(exchange, store, **(params | kw))


async def stored(store: MarketStore) -> pd.DataFrame:
    return await store.read_candles("binance", SYMBOL, "1h")


def test_api_url_moves_every_rest_and_websocket_url_to_the_fake() -> None:
    cfg = ExchangeConfig(api_url="http://127.0.0.1:8765", sandbox=True, rate_limit=False)
    secrets = Secrets(exchange_api_key=SecretStr("k3y"), exchange_secret=SecretStr("s3cret"))
    rest = create_exchange(cfg, secrets)
    pro = create_exchange(cfg, secrets, pro=True)

    def urls(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [u for v in value.values() for u in urls(v)]
        return [value] if isinstance(value, str) else []

    assert rest.urls["api"]["public"] == "http://127.0.0.1:8765/api/v3"
    assert pro.urls["api"]["ws"]["spot"] == "ws://127.0.0.1:8765/stream/ws"
    assert all(
        u.startswith(("http://127.0.0.1:8765/", "ws://127.0.0.1:8765/"))
        for u in urls(pro.urls["api"])
    )
    assert (rest.apiKey, rest.secret, rest.enableRateLimit) == ("k3y", "s3cret", False)
    assert rest.options["fetchMarkets"]["types"] == ["spot"]
    assert rest.options["fetchCurrencies"] is False


async def test_markets_load_in_one_request(fake: FakeBinance, exchange: Any) -> None:
    await exchange.load_markets()

    assert [r.path for r in fake.requests()] == ["/api/v3/exchangeInfo"]
    market = exchange.market(SYMBOL)
    assert market["spot"] and market["active"]
    assert market["precision"]["price"] == 0.01
    assert market["limits"]["cost"]["min"] == 5.0


async def test_2500_candles_come_in_three_pages_with_the_exchange_values(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 2500)
    seen: list[tuple[int, int]] = []

    result = await download(
        exchange, market_store, limit=1000, progress=lambda d, t: seen.append((d, t))
    )

    assert (result.rows_written, result.pages) == (2500, 3)
    assert result.first_open_time == START
    assert result.last_open_time == START + 2499 * HOUR_MS
    assert result.resumed_from is None
    assert seen == [(1000, 2500), (2000, 2500), (2500, 2500)]
    assert [int(r.query["startTime"]) for r in fake.requests(KLINES)] == [
        START,
        START + 1000 * HOUR_MS,
        START + 2000 * HOUR_MS,
    ]
    pd.testing.assert_frame_equal(await stored(market_store), expected)


async def test_a_second_download_resumes_after_the_last_stored_candle(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 300)
    await download(exchange, market_store, until_ms=START + 100 * HOUR_MS)
    before = fake.count(KLINES)

    result = await download(exchange, market_store)

    assert result.resumed_from == START + 100 * HOUR_MS
    assert result.rows_written == 200
    assert int(fake.requests(KLINES)[before].query["startTime"]) == START + 100 * HOUR_MS
    pd.testing.assert_frame_equal(await stored(market_store), expected)


async def test_an_up_to_date_store_downloads_nothing(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    given_candles(fake, 50)
    await download(exchange, market_store)
    before = fake.count(KLINES)

    result = await download(exchange, market_store)

    assert (result.rows_written, result.pages, result.first_open_time) == (0, 0, None)
    assert fake.count(KLINES) == before


async def test_a_download_cut_off_by_failures_resumes_with_no_gap_and_no_duplicate(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 10_000)
    fake.inject(KLINES, 503, times=None, after=5)  # pages 1-5 succeed, then the server is down

    with pytest.raises(DownloadError) as failure:
        await download(exchange, market_store, max_retries=2)

    message = str(failure.value)
    assert "stopped after 2024-07-27T07:00:00Z" in message
    assert "exchange not available" in message and "run it again to resume" in message
    assert len(await stored(market_store)) == 5000

    fake.clear_faults()
    result = await download(exchange, market_store)

    assert result.resumed_from == START + 5000 * HOUR_MS
    assert result.rows_written == 5000
    frame = await stored(market_store)
    assert len(frame) == 10_000
    assert (np.diff(frame["open_time"]) == HOUR_MS).all()
    pd.testing.assert_frame_equal(frame, expected)


async def test_a_cancelled_download_keeps_finished_pages_and_resumes(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 10_000)
    fake.delay(KLINES, 30.0, after=5)  # the sixth page hangs: cancel the task during it
    task = asyncio.create_task(download(exchange, market_store))
    async with asyncio.timeout(5):
        while fake.count(KLINES) < 6:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(await stored(market_store)) == 5000

    fake.clear_faults()
    restarted = create_exchange(fake.exchange_config())  # as after a restart of the process
    restarted.timeout_on_exit = 0
    try:
        result = await download(restarted, market_store)
    finally:
        await restarted.close()

    assert result.rows_written == 5000
    pd.testing.assert_frame_equal(await stored(market_store), expected)


async def test_rate_limits_and_server_errors_are_retried_until_the_download_completes(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 2500)
    fake.inject(KLINES, 429, headers={"Retry-After": "0.3"}, after=1)
    fake.inject(KLINES, 418, headers={"Retry-After": "0.2"})
    fake.inject(KLINES, 500)
    fake.inject(KLINES, 503, times=2)

    result = await download(exchange, market_store, limit=1000, max_retries=5)

    assert result.rows_written == 2500
    pd.testing.assert_frame_equal(await stored(market_store), expected)
    requests = fake.requests(KLINES)
    assert len(requests) == 3 + 5  # three pages, five failed attempts
    waited_ms = requests[2].received_ms - requests[1].received_ms
    assert waited_ms >= 290, "the 429's Retry-After must be honoured"


@pytest.mark.parametrize(
    ("body", "error", "text"),
    [
        ({"code": -1121, "msg": "Invalid symbol."}, ccxt.BadSymbol, "-1121 Invalid symbol."),
        (
            {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
            ccxt.AuthenticationError,
            "authentication failed",
        ),
    ],
)
async def test_a_permanent_error_is_not_retried_and_says_what_is_wrong(
    fake: FakeBinance,
    exchange: Any,
    market_store: MarketStore,
    body: dict[str, Any],
    error: type[Exception],
    text: str,
) -> None:
    given_candles(fake, 100)
    fake.inject(KLINES, 400, body=body, times=None)

    with pytest.raises(DownloadError, match=text) as failure:
        await download(exchange, market_store)

    assert isinstance(failure.value.__cause__, error)
    assert "\n" not in str(failure.value)
    assert fake.count(KLINES) == 1
    assert len(await stored(market_store)) == 0


async def test_the_candle_still_open_is_never_stored(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    given_candles(fake, 10)
    open_candle = START + 10 * HOUR_MS

    result = await download(exchange, market_store)

    assert result.last_open_time == open_candle - HOUR_MS
    assert (await stored(market_store))["open_time"].max() == open_candle - HOUR_MS


async def test_an_answer_that_includes_the_open_candle_is_trimmed(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    # An exchange (or proxy) that ignores endTime: the open candle arrives and must be dropped.
    expected = given_candles(fake, 10)
    rows = _klines(fake.candles("BTCUSDT", "1h"))
    fake.inject(KLINES, 200, body=rows)

    result = await download(exchange, market_store)

    assert result.rows_written == 10
    pd.testing.assert_frame_equal(await stored(market_store), expected)


async def test_the_download_uses_the_exchange_clock_when_now_is_not_given(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    given_candles(fake, 20)
    fake.now_ms = START + 5 * HOUR_MS  # the exchange says only 5 candles have closed

    result = await download(exchange, market_store)

    assert fake.count("/api/v3/time") == 1
    assert result.rows_written == 5


async def test_an_empty_page_ends_the_download(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    given_candles(fake, 100)
    fake.inject(KLINES, 200, body=[], after=1)

    result = await download(exchange, market_store, limit=40)

    assert (result.rows_written, result.pages) == (40, 1)
    assert fake.count(KLINES) == 2


async def test_a_page_that_does_not_advance_ends_the_download(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    frame = given_candles(fake, 100)
    first_page = _klines(frame.iloc[:40])
    fake.inject(KLINES, 200, body=first_page, times=None)  # the same page whatever is asked

    result = await download(exchange, market_store, limit=40)

    assert (result.rows_written, result.pages) == (40, 1)
    assert fake.count(KLINES) == 2


async def test_a_bad_page_is_not_stored(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    frame = given_candles(fake, 100)
    bad = frame.iloc[40:80].copy()
    bad.loc[bad.index[3], "high"] = bad.loc[bad.index[3], "low"] / 2
    fake.inject(KLINES, 200, body=_klines(bad), after=1)

    with pytest.raises(DataValidationError, match="high"):
        await download(exchange, market_store, limit=40)

    assert len(await stored(market_store)) == 40


def _klines(frame: pd.DataFrame) -> list[list[Any]]:
    """Binance klines rows for ``frame`` (1h candles)."""
    return [
        [
            int(t),
            str(o),
            str(h),
            str(lo),
            str(c),
            str(v),
            int(t) + HOUR_MS - 1,
            "0",
            1,
            "0",
            "0",
            "0",
        ]
        for t, o, h, lo, c, v in frame.itertuples(index=False, name=None)
    ]


async def test_a_download_fills_the_range_before_the_stored_candles(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 100)
    await download(exchange, market_store, since_ms=START + 80 * HOUR_MS)  # the last 20 hours
    before = fake.count(KLINES)

    result = await download(exchange, market_store)  # now the whole range

    assert result.rows_written == 80
    assert result.ranges == ((START, START + 80 * HOUR_MS),)
    assert (result.first_open_time, result.last_open_time) == (START, START + 79 * HOUR_MS)
    [request] = fake.requests(KLINES)[before:]
    assert int(request.query["startTime"]) == START
    pd.testing.assert_frame_equal(await stored(market_store), expected)


async def test_a_download_fills_gaps_inside_the_stored_range(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 100)
    holey = expected[~expected["open_time"].between(START + 30 * HOUR_MS, START + 39 * HOUR_MS)]
    await market_store.upsert_frame("binance", SYMBOL, "1h", holey.iloc[:-10])  # tail missing too

    result = await download(exchange, market_store)

    assert result.ranges == (
        (START + 30 * HOUR_MS, START + 40 * HOUR_MS),
        (START + 90 * HOUR_MS, START + 100 * HOUR_MS),
    )
    assert result.rows_written == 20
    assert result.resumed_from == START + 90 * HOUR_MS
    pd.testing.assert_frame_equal(await stored(market_store), expected)
    assert [c.gaps for c in await market_store.coverage()] == [0]


async def test_a_ban_longer_than_max_wait_stops_the_download_with_a_clear_error(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    given_candles(fake, 2500)
    fake.inject(KLINES, 418, headers={"Retry-After": "7200"}, after=1)

    started = asyncio.get_running_loop().time()
    with pytest.raises(DownloadError) as failure:
        await download(exchange, market_store, limit=1000, max_wait_s=60)

    assert asyncio.get_running_loop().time() - started < 5, "it must not sleep through a ban"
    message = str(failure.value)
    assert "stopped after 2024-02-11T15:00:00Z" in message
    assert "asked to wait 7200 s" in message and "run it again to resume" in message
    assert len(await stored(market_store)) == 1000


async def test_a_local_now_ahead_of_the_exchange_never_stores_a_forming_candle(
    fake: FakeBinance, exchange: Any, market_store: MarketStore
) -> None:
    expected = given_candles(fake, 10)  # the exchange's clock is inside candle 10, still forming
    ahead = fake.now_ms + HOUR_MS  # a caller whose clock runs an hour ahead: "candle 10 closed"

    result = await download(exchange, market_store, now_ms=ahead)

    # The answer held no candle after 10, so the exchange's clock decided: still forming.
    assert result.last_open_time == START + 9 * HOUR_MS
    assert fake.count("/api/v3/time") == 1
    pd.testing.assert_frame_equal(await stored(market_store), expected)
