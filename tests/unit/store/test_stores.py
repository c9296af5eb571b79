"""The SQLite stores: WAL, versioned schema, idempotent upserts, ordered reads."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from bot.events import Bar, Metric
from bot.store import MarketStore, MetricStore
from bot.store.sqlite import SchemaError

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
