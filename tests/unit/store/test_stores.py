"""The SQLite stores: WAL, versioned schema, idempotent upserts, ordered reads."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from bot.events import Bar, Metric
from bot.store import MarketStore, MetricStore
from bot.store.market import candle_frame
from bot.store.metrics import daily_known_at
from bot.store.sqlite import SchemaError, open_database

H = 3_600_000


def candles(n: int, start: int = 0) -> list[tuple[int, float, float, float, float, float]]:
    return [(start + i * H, 10.0 + i, 12.0 + i, 9.0 + i, 11.0 + i, 100.0) for i in range(n)]


async def test_market_db_is_wal_and_versioned(market_store: MarketStore) -> None:
    async with aiosqlite.connect(market_store.path) as db:
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"  # type: ignore[index]
        async with db.execute("PRAGMA user_version") as cur:
            assert (await cur.fetchone())[0] == 1  # type: ignore[index]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "market.db"
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA user_version=99")
        await db.commit()
    with pytest.raises(SchemaError, match="newer than this code"):
        await MarketStore.open(path)


async def test_candle_upserts_are_idempotent(market_store: MarketStore) -> None:
    await market_store.upsert_candles("binance", "BTC/USDT", "1h", candles(5))
    await market_store.upsert_candles("binance", "BTC/USDT", "1h", candles(5))
    frame = await market_store.read_candles("binance", "BTC/USDT", "1h")
    assert len(frame) == 5
    assert frame["open_time"].tolist() == [i * H for i in range(5)]
    assert await market_store.last_open_time("binance", "BTC/USDT", "1h") == 4 * H


async def test_a_revised_candle_replaces_the_old_one(market_store: MarketStore) -> None:
    await market_store.upsert_candles("binance", "BTC/USDT", "1h", candles(3))
    await market_store.upsert_candles("binance", "BTC/USDT", "1h", [(H, 1.0, 2.0, 0.5, 1.5, 7.0)])
    frame = await market_store.read_candles("binance", "BTC/USDT", "1h")
    assert frame.loc[1, "close"] == 1.5 and frame.loc[1, "volume"] == 7.0


async def test_bars_stream_in_close_time_then_symbol_order(market_store: MarketStore) -> None:
    await market_store.upsert_candles("x", "ETH/USDT", "1h", candles(3))
    await market_store.upsert_candles("x", "BTC/USDT", "1h", candles(3))
    bars = [b async for b in market_store.iter_bars("x", ["BTC/USDT", "ETH/USDT"], "1h", batch=2)]
    assert [(b.ts, b.symbol) for b in bars[:3]] == [
        (H, "BTC/USDT"),
        (H, "ETH/USDT"),
        (2 * H, "BTC/USDT"),
    ]
    assert all(isinstance(b, Bar) and b.ts == b.open_time + H for b in bars)


async def test_coverage_counts_gaps(market_store: MarketStore) -> None:
    rows = candles(10)
    del rows[3:5]
    await market_store.upsert_candles("x", "BTC/USDT", "1h", rows)
    (cov,) = await market_store.coverage()
    assert (cov.rows, cov.gaps, cov.first_open_time, cov.last_open_time) == (8, 2, 0, 9 * H)


async def test_failed_write_leaves_nothing_half_written(market_store: MarketStore) -> None:
    good = candles(3)
    bad = [*candles(3, start=10 * H), (13 * H, None, 1.0, 1.0, 1.0, 1.0)]
    await market_store.upsert_candles("x", "BTC/USDT", "1h", good)
    with pytest.raises(TypeError):
        await market_store.upsert_candles("x", "BTC/USDT", "1h", bad)  # type: ignore[arg-type]
    assert len(await market_store.read_candles("x", "BTC/USDT", "1h")) == 3


async def test_metrics_round_trip_and_stream_by_known_time(metric_store: MetricStore) -> None:
    day = 24 * H
    rows = [
        ("BTC", "active_addresses", 0, day + H, 1.0),
        ("BTC", "active_addresses", day, 2 * day + H, 2.0),
        ("LINK", "tx_count", 0, day + 2 * H, 3.0),
    ]
    assert await metric_store.upsert_metrics(rows, source="test") == 3
    await metric_store.upsert_metrics(rows, source="test")
    frame = await metric_store.read_metrics(assets=["BTC"])
    assert frame["value"].tolist() == [1.0, 2.0]
    events = [m async for m in metric_store.iter_metrics()]
    assert [(m.ts, m.asset) for m in events] == [
        (day + H, "BTC"),
        (day + 2 * H, "LINK"),
        (2 * day + H, "BTC"),
    ]
    assert isinstance(events[0], Metric) and events[0].observed_at == 0
    known = await metric_store.read_metrics(known_before=2 * day)
    assert len(known) == 2
    assert await metric_store.names("BTC") == ["active_addresses"]
    assert await metric_store.last_observed_at("BTC", "active_addresses") == day


async def test_a_value_cannot_be_known_before_it_happened(metric_store: MetricStore) -> None:
    with pytest.raises(aiosqlite.IntegrityError):
        await metric_store.upsert_metrics([("BTC", "x", 10, 5, 1.0)], source="test")
    assert await metric_store.assets() == []


async def _synchronous_level(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA synchronous") as cursor:
        return (await cursor.fetchone())[0]  # type: ignore[index]


async def test_open_database_sets_the_durability_the_caller_asks_for(tmp_path: Path) -> None:
    normal = await open_database(tmp_path / "a.db", [])
    full = await open_database(tmp_path / "journal.db", [], synchronous="FULL")
    try:
        assert await _synchronous_level(normal) == 1  # NORMAL, the default
        assert await _synchronous_level(full) == 2  # FULL, for an order journal
    finally:
        await normal.close()
        await full.close()
    with pytest.raises(ValueError, match="synchronous must be one of"):
        await open_database(tmp_path / "b.db", [], synchronous="SOMETIMES")  # type: ignore[arg-type]


async def test_missing_ranges_cover_the_head_the_gaps_and_the_tail(
    market_store: MarketStore,
) -> None:
    rows = candles(10, start=5 * H)  # 05:00 .. 14:00
    del rows[3:5]  # 08:00 and 09:00 missing
    del rows[4]  # 11:00 missing
    await market_store.upsert_candles("x", "BTC/USDT", "1h", rows)

    missing = await market_store.missing_ranges("x", "BTC/USDT", "1h", 0, 20 * H)

    assert missing == [(0, 5 * H), (8 * H, 10 * H), (11 * H, 12 * H), (15 * H, 20 * H)]
    assert await market_store.missing_ranges("x", "BTC/USDT", "1h", 12 * H, 15 * H) == []
    assert await market_store.missing_ranges("x", "ETH/USDT", "1h", 0, 3 * H) == [(0, 3 * H)]


def test_candle_frame_gives_the_store_columns_and_dtypes() -> None:
    frame = candle_frame([(H, 1, 2, 0.5, 1.5, 3), (2 * H, 1.5, 2, 1, None, 4, "extra")])
    assert list(frame.columns) == ["open_time", "open", "high", "low", "close", "volume"]
    assert frame.dtypes.astype(str).tolist() == ["int64"] + ["float64"] * 5
    assert frame["close"].isna().tolist() == [False, True]  # missing stays visible to validation


async def test_metric_resume_counts_only_the_rows_of_its_own_source(
    metric_store: MetricStore,
) -> None:
    day = 24 * H
    await metric_store.upsert_metrics(
        [("BTC", "exchange_inflow", 9 * day, 10 * day, 1.0)], "synthetic"
    )
    await metric_store.upsert_metrics(
        [("BTC", "exchange_inflow", 2 * day, 3 * day, 1.0)], "santiment"
    )

    assert await metric_store.last_observed_at("BTC", "exchange_inflow") == 9 * day
    assert await metric_store.last_observed_at("BTC", "exchange_inflow", source="santiment") == (
        2 * day
    )
    assert await metric_store.last_observed_at("BTC", "exchange_inflow", source="csv") is None
    assert await metric_store.sources("BTC", "exchange_inflow") == ["santiment", "synthetic"]


def test_values_fetched_live_are_known_when_fetched_and_backfills_at_the_nominal_time() -> None:
    day, lag = 24 * H, H
    observed = [0, 10 * day, 20 * day]
    nominal = [d + day + lag for d in observed]

    assert daily_known_at(observed, lag).tolist() == nominal
    # Fetched 3 days after day 20 ended: day 20 is live (within lag + 2 days of its nominal time),
    # so the bot had it only when fetched; days 0 and 10 are a backfill and keep the nominal time.
    fetched = 20 * day + day + 3 * H
    assert daily_known_at(observed, lag, fetched_at_ms=fetched).tolist() == [
        nominal[0],
        nominal[1],
        fetched,
    ]
    # Fetched before the nominal time (the source was early): never known before nominal.
    assert daily_known_at([20 * day], lag, fetched_at_ms=20 * day + 5 * H).tolist() == [nominal[2]]
    # Just past the live window: a backfill.
    late = nominal[2] + lag + 2 * day + 1
    assert daily_known_at([20 * day], lag, fetched_at_ms=late).tolist() == [nominal[2]]
    with pytest.raises(ValueError, match="publication_lag_ms"):
        daily_known_at(observed, -1)
