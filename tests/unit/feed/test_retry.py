"""Retry policy: which errors are temporary, backoff, Retry-After, and the messages it logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import ccxt
import pytest

from bot.feed.exchange import describe_error, is_temporary
from bot.feed.retry import (
    RetryWaitTooLong,
    backoff_delay,
    call_with_retries,
    parse_retry_after,
)


class FakeSleep:
    """Records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Flaky:
    """An async call that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.last_response_headers: dict[str, str] = {}

    async def fetch(self, *args: object, **kw: object) -> str:
        self.calls += 1
        self.last_args = (args, kw)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


TEMPORARY = [
    ccxt.NetworkError("connection reset"),
    ccxt.RequestTimeout("binance GET https://x/api/v3/klines"),
    ccxt.ExchangeNotAvailable("binance 503 Service Unavailable"),
    ccxt.DDoSProtection("binance 429 Too Many Requests"),
    ccxt.RateLimitExceeded("slow down"),
    ccxt.InvalidNonce("binance -1021 Timestamp for this request is outside of the recvWindow."),
    ccxt.OnMaintenance("maintenance"),
    TimeoutError(),
    ConnectionResetError(),
]
PERMANENT = [
    ccxt.AuthenticationError("binance -2015 Invalid API-key"),
    ccxt.BadSymbol("binance -1121 Invalid symbol."),
    ccxt.InvalidOrder("binance -1013 Filter failure: LOT_SIZE"),
    ccxt.InsufficientFunds("binance Account has insufficient balance"),
    ccxt.ExchangeError("binance -1000 unknown"),
    ccxt.NotSupported("sapi in sandbox"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("exc", TEMPORARY, ids=lambda e: type(e).__name__)
def test_network_and_rate_limit_errors_are_temporary(exc: BaseException) -> None:
    assert is_temporary(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_exchange_errors_are_permanent(exc: BaseException) -> None:
    assert not is_temporary(exc)


async def test_temporary_errors_are_retried_with_growing_jittered_waits() -> None:
    flaky = Flaky(
        ccxt.RequestTimeout("t1"), ccxt.ExchangeNotAvailable("503"), ccxt.NetworkError("x")
    )
    sleep = FakeSleep()

    result = await call_with_retries(
        flaky.fetch, "BTC/USDT", max_retries=5, base_delay_s=0.5, sleep=sleep, limit=3
    )

    assert result == "ok"
    assert flaky.calls == 4
    assert flaky.last_args == (("BTC/USDT",), {"limit": 3})
    for n, wait in enumerate(sleep.waits, start=1):
        nominal = 0.5 * 2 ** (n - 1)
        assert nominal <= wait <= nominal * 1.25


async def test_a_permanent_error_is_raised_at_once() -> None:
    flaky = Flaky(ccxt.BadSymbol("binance -1121 Invalid symbol."))
    sleep = FakeSleep()

    with pytest.raises(ccxt.BadSymbol):
        await call_with_retries(flaky.fetch, max_retries=5, base_delay_s=1.0, sleep=sleep)

    assert flaky.calls == 1
    assert sleep.waits == []


async def test_the_last_temporary_error_is_raised_when_retries_run_out() -> None:
    flaky = Flaky(*(ccxt.ExchangeNotAvailable(f"503 #{i}") for i in range(10)))
    sleep = FakeSleep()

    with pytest.raises(ccxt.ExchangeNotAvailable, match="#3"):
        await call_with_retries(flaky.fetch, max_retries=3, base_delay_s=0.01, sleep=sleep)

    assert flaky.calls == 4
    assert len(sleep.waits) == 3


async def test_zero_retries_means_one_attempt() -> None:
    flaky = Flaky(ccxt.RequestTimeout("t"))
    with pytest.raises(ccxt.RequestTimeout):
        await call_with_retries(flaky.fetch, max_retries=0, base_delay_s=1.0, sleep=FakeSleep())
    assert flaky.calls == 1


async def test_retry_after_from_the_exchange_headers_sets_the_minimum_wait() -> None:
    flaky = Flaky(ccxt.DDoSProtection("binance 429 Too Many Requests"))
    flaky.last_response_headers = {"retry-after": "7"}
    sleep = FakeSleep()

    await call_with_retries(flaky.fetch, max_retries=2, base_delay_s=0.1, sleep=sleep)

    assert sleep.waits == [7.0]


async def test_retry_after_is_ignored_for_errors_that_are_not_rate_limits() -> None:
    # The headers then belong to an older answer, not to the failure being retried.
    flaky = Flaky(ccxt.RequestTimeout("timeout"))
    flaky.last_response_headers = {"Retry-After": "300"}
    sleep = FakeSleep()

    await call_with_retries(flaky.fetch, max_retries=2, base_delay_s=0.1, sleep=sleep)

    assert sleep.waits[0] < 1


async def test_a_custom_retry_after_reader_and_on_retry_hook_are_used() -> None:
    flaky = Flaky(ccxt.RateLimitExceeded("slow"), ccxt.RateLimitExceeded("slower"))
    seen: list[tuple[int, str, float]] = []
    sleep = FakeSleep()

    await call_with_retries(
        flaky.fetch,
        max_retries=3,
        base_delay_s=0.01,
        sleep=sleep,
        retry_after=lambda exc: 2.5 if "slower" in str(exc) else None,
        on_retry=lambda n, exc, wait: seen.append((n, str(exc), wait)),
    )

    assert [(n, text) for n, text, _ in seen] == [(1, "slow"), (2, "slower")]
    assert sleep.waits[1] == 2.5
    assert [wait for _, _, wait in seen] == sleep.waits


async def test_each_retry_logs_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(
        ccxt.ExchangeNotAvailable("binance GET http://h/api/v3/klines 503 Service Unavailable")
    )

    with caplog.at_level(logging.WARNING, logger="bot.feed.retry"):
        await call_with_retries(flaky.fetch, max_retries=2, base_delay_s=0.01, sleep=FakeSleep())

    lines = [r.getMessage() for r in caplog.records if r.name == "bot.feed.retry"]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "fetch failed, retry 1/2" in lines[0]
    assert "exchange not available (ExchangeNotAvailable)" in lines[0]


def test_backoff_is_capped() -> None:
    assert 60.0 <= backoff_delay(30, 1.0) <= 75.0
    assert backoff_delay(3, 1.0, max_delay_s=2.0, jitter=0.0) == 2.0


def test_retry_after_header_may_be_seconds_or_an_http_date() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "120"}) == 120.0
    assert parse_retry_after({"RETRY-AFTER": "Mon, 01 Jan 2024 12:00:30 GMT"}, now=now) == 30.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Content-Type": "application/json"}) is None


def test_describe_error_reads_binance_codes_on_one_line() -> None:
    exc = ccxt.BadSymbol('binance {"code":-1121,"msg":"Invalid symbol."}')
    assert describe_error(exc) == (
        "unknown or unsupported symbol (BadSymbol): binance -1121 Invalid symbol."
    )


def test_describe_error_never_shows_signatures_or_keys() -> None:
    exc = ccxt.AuthenticationError(
        "binance GET https://api.binance.com/api/v3/account?timestamp=1&recvWindow=10000"
        "&signature=abcdef0123456789 X-MBX-APIKEY: mykey123\n"
        '{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action."}'
    )
    text = describe_error(exc)
    assert "abcdef0123456789" not in text
    assert "mykey123" not in text
    assert "topsecret" not in describe_error(ccxt.ExchangeError('binance {"secret": "topsecret"}'))
    assert "\n" not in text
    assert text.startswith("authentication failed")


async def test_a_server_wait_beyond_max_wait_s_raises_instead_of_sleeping() -> None:
    # A 418 is an IP ban: its Retry-After can be hours, which no call should sleep through.
    flaky = Flaky(ccxt.DDoSProtection("binance 418 I'm a teapot"))
    flaky.last_response_headers = {"Retry-After": "7200"}
    sleep = FakeSleep()

    with pytest.raises(RetryWaitTooLong) as caught:
        await call_with_retries(
            flaky.fetch, max_retries=5, base_delay_s=0.1, sleep=sleep, max_wait_s=120
        )

    assert sleep.waits == []
    assert (caught.value.wait_s, caught.value.max_wait_s) == (7200.0, 120)
    assert isinstance(caught.value.__cause__, ccxt.DDoSProtection)
    message = str(caught.value)
    assert "asked to wait 7200 s" in message and "120 s allowed" in message
    assert "\n" not in message

    # A wait within the cap is honoured as before.
    flaky = Flaky(ccxt.DDoSProtection("binance 429"))
    flaky.last_response_headers = {"Retry-After": "100"}
    await call_with_retries(
        flaky.fetch, max_retries=1, base_delay_s=0.1, sleep=sleep, max_wait_s=120
    )
    assert sleep.waits == [100.0]
