"""SantimentSource (real sanpy) against the fake Santiment GraphQL server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
import pytest
import san
import san.graphql
from pydantic import SecretStr

from bot.feed.santiment import (
    API_KEY_ENV,
    SANPY_DEFAULT_ENDPOINT,
    MetricNotAllowed,
    SantimentAuthError,
    SantimentError,
    SantimentRateLimited,
    SantimentSource,
    use_santiment_endpoint,
)
from bot.store import MetricStore
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from config.schema import SantimentConfig
from tests.fakes.santiment import FakeSantiment

NOW = to_ms("2024-06-01")
JAN_1 = to_ms("2024-01-01")
SLUG = "bitcoin"
ASSET = "BTC"
DAA = "daily_active_addresses"


def day(n: int) -> int:
    """00:00 UTC of 2024-01-n, in ms."""
    return JAN_1 + (n - 1) * DAY_MS


def daily(first: int, last: int, scale: float = 1.0) -> dict[int, float]:
    """Values ``n * scale`` for the days 2024-01-first .. 2024-01-last."""
    return {day(n): n * scale for n in range(first, last + 1)}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSantiment]:
    """A fake Santiment whose clock stands at 2024-06-01 (January is complete history)."""
    async with FakeSantiment(now_ms=NOW) as server:
        yield server


def source(
    fake: FakeSantiment, *, retries: int = 0, api_key: str | None = None, **kwargs: Any
) -> SantimentSource:
    cfg = SantimentConfig(api_url=fake.url, retries=retries)
    return SantimentSource(cfg, SecretStr(api_key) if api_key else None, **kwargs)


async def test_list_metrics_returns_what_the_server_offers_for_the_slug(
    fake: FakeSantiment,
) -> None:
    fake.set_available_metrics(SLUG, ["mvrv_usd", DAA, "dev_activity"])

    names = await source(fake).list_metrics(SLUG)

    assert names == ["daily_active_addresses", "dev_activity", "mvrv_usd"]
    assert 'projectBySlug(slug: "bitcoin")' in fake.requests[-1].query


async def test_fetch_daily_returns_only_the_requested_days_at_midnight_utc(
    fake: FakeSantiment,
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 10, scale=100.0))

    frame = await source(fake).fetch_daily(DAA, SLUG, day(3) + 5 * HOUR_MS, day(6))

    assert frame["observed_at"].tolist() == [day(3), day(4), day(5)]
    assert frame["value"].tolist() == [300.0, 400.0, 500.0]
    assert frame.dtypes.to_dict() == {"observed_at": "int64", "value": "float64"}
    [call] = fake.timeseries_calls
    assert (call.metric, call.slug, call.interval) == (DAA, SLUG, "1d")
    assert (to_ms(call.from_), to_ms(call.to)) == (day(3), day(6))


async def test_fetch_daily_without_data_gives_an_empty_frame(fake: FakeSantiment) -> None:
    fake.add_series(SLUG, DAA, daily(1, 3))
    fake.add_series(SLUG, "dev_activity", daily(1, 3))
    fake.null_result("dev_activity")  # {"data": {"query_0": null}}: SanEmptyResultError
    santiment = source(fake)

    no_points = await santiment.fetch_daily(DAA, "ethereum", day(1), day(4))
    null_result = await santiment.fetch_daily("dev_activity", SLUG, day(1), day(4))

    for frame in (no_points, null_result):
        assert frame.empty
        assert frame.dtypes.to_dict() == {"observed_at": "int64", "value": "float64"}


async def test_download_writes_known_at_one_day_plus_lag_after_observed_at(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 5))
    fake.add_series(SLUG, "network_growth", daily(1, 5, scale=2.0))

    report = await source(fake).download(
        ASSET,
        SLUG,
        [DAA, "network_growth"],
        day(1),
        day(6),
        metric_store,
        publication_lag_ms=HOUR_MS,
    )

    assert report.written == {DAA: 5, "network_growth": 5}
    assert report.skipped == ()
    stored = await metric_store.read_metrics([ASSET])
    assert len(stored) == 10
    assert (stored["known_at"] - stored["observed_at"] == DAY_MS + HOUR_MS).all()
    growth = stored[stored["name"] == "network_growth"]
    assert growth["observed_at"].tolist() == [day(n) for n in range(1, 6)]
    assert growth["value"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert {c.source for c in await metric_store.coverage()} == {"santiment"}


async def test_download_resumes_after_the_last_stored_day(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    santiment = source(fake)
    fake.add_series(SLUG, DAA, daily(1, 5))
    first = await santiment.download(
        ASSET, SLUG, [DAA], day(1), day(6), metric_store, publication_lag_ms=0
    )
    fake.add_series(SLUG, DAA, daily(6, 10))

    second = await santiment.download(
        ASSET, SLUG, [DAA], day(1), day(11), metric_store, publication_lag_ms=0
    )
    calls = len(fake.timeseries_calls)
    third = await santiment.download(
        ASSET, SLUG, [DAA], day(1), day(11), metric_store, publication_lag_ms=0
    )

    assert (first.written, second.written, third.written) == ({DAA: 5}, {DAA: 5}, {DAA: 0})
    assert to_ms(fake.timeseries_calls[1].from_) == day(6)
    assert len(fake.timeseries_calls) == calls  # up to date: nothing asked
    stored = await metric_store.read_metrics([ASSET], [DAA])
    assert stored["observed_at"].tolist() == [day(n) for n in range(1, 11)]


async def test_restricted_metric_is_skipped_with_the_servers_reason_and_others_are_written(
    fake: FakeSantiment, metric_store: MetricStore, caplog: pytest.LogCaptureFixture
) -> None:
    for metric in (DAA, "mvrv_usd", "exchange_inflow"):
        fake.add_series(SLUG, metric, daily(1, 3))
    fake.restrict("mvrv_usd")
    seen: list[tuple[str, int, int]] = []

    with caplog.at_level(logging.WARNING, logger="bot.feed.santiment"):
        report = await source(fake).download(
            ASSET,
            SLUG,
            [DAA, "mvrv_usd", "exchange_inflow"],
            day(1),
            day(4),
            metric_store,
            publication_lag_ms=0,
            progress=lambda metric, done, total: seen.append((metric, done, total)),
        )

    assert report.written == {DAA: 3, "exchange_inflow": 3}
    [skipped] = report.skipped
    assert (skipped.metric, skipped.slug, skipped.kind) == ("mvrv_usd", SLUG, "plan")
    assert "is not accessible with the currently used SANAPI FREE subscription" in skipped.reason
    assert "\n" not in skipped.reason
    assert await metric_store.names(ASSET) == [DAA, "exchange_inflow"]
    warning = caplog.records[-1].getMessage()
    assert "'mvrv_usd'" in warning and "'bitcoin'" in warning and "not accessible" in warning
    assert seen == [(DAA, 1, 3), ("mvrv_usd", 2, 3), ("exchange_inflow", 3, 3)]
    assert "mvrv_usd" in report.summary()


async def test_history_outside_the_plan_is_skipped_and_a_partial_range_is_cut(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 10))
    fake.limit_history(day(20), None)
    santiment = source(fake)

    with pytest.raises(MetricNotAllowed) as refused:
        await santiment.fetch_daily(DAA, SLUG, day(1), day(11))
    fake.limit_history(day(8), None)
    report = await santiment.download(
        ASSET, SLUG, [DAA], day(1), day(11), metric_store, publication_lag_ms=0
    )

    assert refused.value.kind == "history"
    assert "outside the allowed interval" in refused.value.reason
    assert "Allowed time restrictions" in refused.value.reason
    assert report.written == {DAA: 3}  # days 8..10: the server cut the range silently


async def test_unknown_metric_is_skipped_as_not_offered(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 2))

    report = await source(fake).download(
        ASSET, SLUG, ["no_such_metric", DAA], day(1), day(3), metric_store, publication_lag_ms=0
    )

    assert report.written == {DAA: 2}
    assert [(s.metric, s.kind) for s in report.skipped] == [("no_such_metric", "unknown")]


async def test_wrong_api_key_raises_auth_error_that_never_shows_the_key(
    fake: FakeSantiment, metric_store: MetricStore, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wrongtoken_s3cr3tvalue"
    fake.register_api_key("goodtoken_other")
    fake.add_series(SLUG, DAA, daily(1, 2))
    santiment = source(fake, api_key=secret)
    key_before = san.ApiConfig.api_key

    with caplog.at_level(logging.DEBUG), pytest.raises(SantimentAuthError) as fetch_error:
        await santiment.fetch_daily(DAA, SLUG, day(1), day(3))
    with pytest.raises(SantimentAuthError):
        await santiment.download(
            ASSET, SLUG, [DAA], day(1), day(3), metric_store, publication_lag_ms=0
        )

    assert fake.requests[0].authorization == f"Apikey {secret}"
    assert [r.status for r in fake.requests] == [400, 400]
    message = str(fetch_error.value)
    assert API_KEY_ENV in message and "\n" not in message
    assert "rejected the API key" in message and "not valid or malformed" in message
    printed = "".join(traceback.format_exception(fetch_error.value))
    for text in (message, repr(fetch_error.value), printed, caplog.text, repr(santiment)):
        assert secret not in text
    assert san.ApiConfig.api_key == key_before  # the key does not linger in sanpy's globals
    assert await metric_store.names(ASSET) == []


async def test_without_a_key_requests_are_served_as_the_free_plan_and_its_limits_are_named(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    fake.register_api_key("goodtoken_other")  # a paid plan exists; this client has no key
    fake.add_series(SLUG, DAA, daily(1, 10))
    fake.add_series(SLUG, "mvrv_usd", daily(1, 10))
    fake.restrict("mvrv_usd")  # not on the free plan
    fake.limit_history(day(5), None)  # the free plan's history starts later

    report = await source(fake).download(
        ASSET, SLUG, [DAA, "mvrv_usd"], day(1), day(11), metric_store, publication_lag_ms=0
    )

    assert [r.authorization for r in fake.requests] == [None, None]
    assert [(r.status, r.plan) for r in fake.requests] == [(200, "FREE"), (200, "FREE")]
    assert report.written == {DAA: 6}  # days 5..10: what the free plan serves
    (skipped,) = report.skipped
    assert skipped.metric == "mvrv_usd" and skipped.kind == "plan"
    assert "free plan" in skipped.reason and API_KEY_ENV in skipped.reason


async def test_a_key_is_served_on_its_plan_in_the_authorization_header(
    fake: FakeSantiment,
) -> None:
    fake.register_api_key("goodtoken_value", plan="PRO")
    fake.add_series(SLUG, DAA, daily(1, 10))
    fake.restrict("mvrv_usd")
    fake.add_series(SLUG, "mvrv_usd", daily(1, 2))
    fake.limit_history(day(5), None)
    santiment = source(fake, api_key="goodtoken_value")

    frame = await santiment.fetch_daily(DAA, SLUG, day(1), day(11))
    paid = await santiment.fetch_daily("mvrv_usd", SLUG, day(1), day(3))

    assert len(frame) == 10 and len(paid) == 2  # the FREE plan's limits do not apply to PRO
    assert fake.requests[-1].authorization == "Apikey goodtoken_value"
    assert fake.requests[-1].plan == "PRO"


async def test_rate_limit_is_waited_out_and_retried_when_retries_allow(
    fake: FakeSantiment,
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 2))
    fake.inject(429, times=1, retry_after_s=0)

    frame = await source(fake, retries=1).fetch_daily(DAA, SLUG, day(1), day(3))

    assert len(frame) == 2
    assert [r.status for r in fake.requests] == [429, 200]


async def test_a_rate_limit_answer_carries_sanbases_headers_and_the_wait_is_honoured(
    fake: FakeSantiment,
) -> None:
    import requests

    fake.register_api_key("goodtoken_value", plan="PRO")
    fake.inject(429, times=1, retry_after_s=37)
    answer = await asyncio.to_thread(
        requests.post,
        fake.url,
        json={"query": "{ getAvailableMetrics }"},
        headers={"authorization": "Apikey goodtoken_value"},
        timeout=10,
    )
    assert answer.status_code == 429 and "Retry-After" not in answer.headers
    assert answer.headers["x-ratelimit-reset"] == "37"
    assert answer.headers["x-ratelimit-remaining-minute"] == "0"
    assert answer.headers["x-ratelimit-remaining"] == "0"
    for period, limit in (("minute", 600), ("hour", 30_000), ("month", 600_000)):
        assert answer.headers[f"x-ratelimit-limit-{period}"] == str(limit)
    assert int(answer.headers["x-ratelimit-remaining-month"]) > 0
    assert answer.json()["errors"]["details"].startswith("API Rate Limit Reached. Try again in 37")
    assert "goodtoken_value" not in answer.text

    served = await asyncio.to_thread(
        requests.post, fake.url, json={"query": "{ getAvailableMetrics }"}, timeout=10
    )
    assert served.status_code == 200  # anonymous: the FREE plan's quota
    assert served.headers["x-ratelimit-limit-month"] == "1000"
    assert served.headers["x-ratelimit-remaining-month"] == "999"

    fake.inject(429, times=1, retry_after_s=37)
    with pytest.raises(SantimentRateLimited) as limited:
        await source(fake, retries=0).list_metrics(SLUG)
    assert limited.value.retry_after_s == 37.0
    assert "without user authentication" not in str(limited.value)  # the headline only


@pytest.mark.parametrize(("retries", "max_wait_s"), [(0, 60.0), (3, 5.0)])
async def test_rate_limit_raises_when_retries_are_spent_or_the_wait_is_too_long(
    fake: FakeSantiment, retries: int, max_wait_s: float
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 2))
    fake.inject(429, times=1, retry_after_s=42)
    santiment = source(fake, retries=retries, max_rate_limit_wait_s=max_wait_s)

    with pytest.raises(SantimentRateLimited) as limited:
        await santiment.fetch_daily(DAA, SLUG, day(1), day(3))

    assert limited.value.retry_after_s == 42.0
    assert "Try again in 42 seconds" in str(limited.value)
    assert len(fake.requests) == 1


async def test_server_error_is_retried_by_sanpy_then_reported(fake: FakeSantiment) -> None:
    fake.add_series(SLUG, DAA, daily(1, 2))
    fake.inject(503, times=1)
    assert len(await source(fake, retries=1).fetch_daily(DAA, SLUG, day(1), day(3))) == 2

    fake.inject(500, times=1)
    with pytest.raises(SantimentError, match="server error"):
        await source(fake, retries=0).fetch_daily(DAA, SLUG, day(1), day(3))


async def test_event_loop_keeps_running_while_sanpy_waits_for_the_server(
    fake: FakeSantiment,
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 2))
    fake.delay(0.3)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        frame = await source(fake).fetch_daily(DAA, SLUG, day(1), day(3))
    finally:
        ticker.cancel()

    assert len(frame) == 2
    assert ticks >= 10


async def test_fake_answers_sanpys_batched_and_per_slug_queries(fake: FakeSantiment) -> None:
    fake.add_series(SLUG, DAA, daily(1, 3))
    fake.add_series("ethereum", DAA, pd.Series(daily(1, 3, scale=10.0)))

    def query_with_sanpy() -> tuple[list[pd.DataFrame], pd.DataFrame]:
        use_santiment_endpoint(fake.url)
        try:
            batch = san.Batch()
            for slug in (SLUG, "ethereum"):
                batch.get(f"{DAA}/{slug}", from_date="2024-01-01", to_date="2024-01-02")
            frames = batch.execute()
            many = san.get_many(
                DAA, slugs=[SLUG, "ethereum"], from_date="2024-01-01", to_date="2024-01-02"
            )
            return frames, many
        finally:
            use_santiment_endpoint(None)

    frames, many = await asyncio.to_thread(query_with_sanpy)

    assert [f["value"].tolist() for f in frames] == [[1.0, 2.0], [10.0, 20.0]]
    assert many["ethereum"].tolist() == [10.0, 20.0]
    assert "query_0:" in fake.requests[0].query and "query_1:" in fake.requests[0].query
    assert san.graphql.DEFAULT_TRANSPORT.base_url == SANPY_DEFAULT_ENDPOINT


async def test_values_fetched_live_are_known_when_fetched_not_before(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 10))
    fetched_at = day(11) + 6 * HOUR_MS  # the bot ran on Jan 11, 06:00
    santiment = source(fake, now_ms=lambda: fetched_at)

    await santiment.download(
        ASSET, SLUG, [DAA], day(1), day(11), metric_store, publication_lag_ms=HOUR_MS
    )

    frame = await metric_store.read_metrics([ASSET], [DAA])
    known = dict(zip(frame["observed_at"], frame["known_at"], strict=True))
    nominal = {d: d + DAY_MS + HOUR_MS for d in known}
    # Days 9 and 10 were fetched within lag + 2 days of their nominal time: the bot had them
    # only at 06:00 on Jan 11, and a replay must not see them earlier.
    assert known[day(10)] == known[day(9)] == fetched_at
    # Older days are a backfill of history: the nominal rule (assumed published on time).
    assert all(known[day(n)] == nominal[day(n)] for n in range(1, 9))


async def test_download_resumes_from_its_own_rows_and_never_writes_into_another_source(
    fake: FakeSantiment, metric_store: MetricStore
) -> None:
    fake.add_series(SLUG, DAA, daily(1, 10))
    fake.add_series(SLUG, "dev_activity", daily(1, 10))
    # The synthetic market wrote this series (same name): Santiment must not join it.
    await metric_store.upsert_metrics([(ASSET, DAA, day(9), day(10), 1.0)], source="synthetic")
    santiment = source(fake)

    with pytest.raises(SantimentError, match=r"from source .synthetic."):
        await santiment.download(
            ASSET, SLUG, [DAA], day(1), day(11), metric_store, publication_lag_ms=0
        )
    assert [r.status for r in fake.requests] == []  # refused before asking

    # Its own older rows do not stop it, and the resume point is its own newest day.
    await metric_store.upsert_metrics(
        [(ASSET, "dev_activity", day(3), day(4), 3.0)], source="santiment"
    )
    report = await santiment.download(
        ASSET, SLUG, ["dev_activity"], day(1), day(11), metric_store, publication_lag_ms=0
    )
    assert report.written == {"dev_activity": 7}
    assert to_ms(fake.timeseries_calls[-1].from_) == day(4)
