"""CSV import: ccxt candle files and daily metric files, validated whole before any write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bot.feed.csv_import import (
    check_directory,
    import_candle_file,
    import_directory,
    import_metric_file,
    metric_name,
    read_candle_csv,
    read_metric_csv,
)
from bot.feed.validation import DataValidationError
from bot.store import MarketStore, MetricStore

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_577_836_800_000  # 2020-01-01 00:00 UTC
HEADER = "timestamp,open,high,low,close,volume\n"
LAG = HOUR

# The header style of the real blockchain.com and Coin Metrics files.
BLOCKCHAIN_HEADER = (
    "date,Nr_Addresses,Nr_Transactions,USD_OnChain_Volume,HashRate,Miners_Revenue_USD,"
    "Mining_Difficulty,Bitcoin_Wikipedia_Search,BTC_Supply\n"
)
COINMETRICS_HEADER = "date,AdrActCnt,CapMVRVCur,NVTAdj90,TxTfrValAdjUSD,ROI30d\n"


def candle_lines(count: int, start: int = T0, price: float = 100.0) -> list[str]:
    """``count`` good hourly candle lines in ccxt's CSV form."""
    lines = []
    for i in range(count):
        o = price + i
        lines.append(f"{start + i * HOUR},{o},{o + 2.5},{o - 1.25},{o + 1},{10 + i}.5\n")
    return lines


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rejected(path: Path) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        read_candle_csv(path)
    assert caught.value.source == str(path)
    return caught.value


def test_candle_csv_is_read_with_store_columns_and_types(tmp_path: Path) -> None:
    path = write(tmp_path / "BTC_USDT-1h.csv", HEADER + "".join(candle_lines(3)))
    frame = read_candle_csv(path, "1h")
    assert list(frame.columns) == ["open_time", "open", "high", "low", "close", "volume"]
    assert frame["open_time"].dtype == "int64"
    assert all(frame[c].dtype == "float64" for c in frame.columns[1:])
    assert frame["open_time"].tolist() == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert frame.iloc[1].tolist() == [T0 + HOUR, 101.0, 103.5, 99.75, 102.0, 11.5]


def test_trailing_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", HEADER + "".join(candle_lines(2)) + "\n\n")
    assert len(read_candle_csv(path)) == 2


@pytest.mark.parametrize(
    ("row", "replacement", "line", "field", "words"),
    [
        (2, f"{T0 + 2 * HOUR},10,9,11,10,1\n", 4, "high", "high 9.0 < low 11.0"),
        (1, f"{T0 + HOUR},10,12,9,,1\n", 3, "close", "close is missing"),
        (3, f"{T0 + 3 * HOUR},10,12,-9,10,1\n", 5, "low", "low -9.0 <= 0"),
        (0, f"{T0},10,12,9,abc,1\n", 2, "close", "'abc' is not a number"),
        (2, f"{T0 + 2 * HOUR},10,12,9,NaN,1\n", 4, "close", "'NaN' is not a number"),
        (2, f"{T0 + HOUR},10,12,9,10,1\n", 4, "open_time", "duplicate open_time"),
        (3, f"{T0 + HOUR // 2},10,12,9,10,1\n", 5, "open_time", "out of order"),
        (1, "\n", 3, "open_time", "open_time is missing"),
        (2, f"{T0 + 2 * HOUR},10,12,9,10,1,7\n", 4, None, "malformed row"),
    ],
)
def test_bad_row_is_rejected_with_its_line(
    tmp_path: Path, row: int, replacement: str, line: int, field: str | None, words: str
) -> None:
    lines = candle_lines(5)
    lines[row] = replacement
    error = rejected(write(tmp_path / "BTC_USDT-1h.csv", HEADER + "".join(lines)))
    assert (error.line, error.field) == (line, field)
    assert words in error.reason
    assert str(error).startswith(f"{tmp_path / 'BTC_USDT-1h.csv'} line {line}: ")


def test_missing_column_is_rejected_on_the_header(tmp_path: Path) -> None:
    text = "timestamp,open,high,low,close\n" + f"{T0},1,2,0.5,1.5\n"
    error = rejected(write(tmp_path / "x.csv", text))
    assert (error.line, error.field) == (1, "volume")
    error = rejected(write(tmp_path / "y.csv", "time,open,high,low,close,volume\n"))
    assert (error.line, error.field) == (1, "timestamp")


def test_empty_and_header_only_files_are_rejected(tmp_path: Path) -> None:
    error = rejected(write(tmp_path / "empty.csv", ""))
    assert (error.line, error.reason) == (1, "empty file (no header)")
    error = rejected(write(tmp_path / "header.csv", HEADER))
    assert (error.line, error.reason) == (2, "no candles (header only)")


def test_misaligned_candles_are_rejected_for_the_file_timeframe(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", HEADER + "".join(candle_lines(3, start=T0 + 60_000)))
    read_candle_csv(path)
    with pytest.raises(DataValidationError, match=r"line 2: open_time .* not aligned"):
        read_candle_csv(path, "1h")


async def test_rejected_candle_file_leaves_the_store_unchanged(
    tmp_path: Path, market_store: MarketStore
) -> None:
    good = write(tmp_path / "good.csv", HEADER + "".join(candle_lines(4)))
    await import_candle_file(good, market_store, exchange="x", symbol="BTC/USDT", timeframe="1h")
    before = await market_store.read_candles("x", "BTC/USDT", "1h")

    lines = candle_lines(6, price=500.0)  # would overwrite the 4 stored candles and add 2
    lines[5] = f"{T0 + 5 * HOUR},10,12,9,10,-1\n"
    bad = write(tmp_path / "bad.csv", HEADER + "".join(lines))
    with pytest.raises(DataValidationError, match=r"line 7: volume -1\.0 < 0"):
        await import_candle_file(bad, market_store, exchange="x", symbol="BTC/USDT", timeframe="1h")
    pd.testing.assert_frame_equal(await market_store.read_candles("x", "BTC/USDT", "1h"), before)


def test_metric_csv_becomes_a_long_frame_without_empty_cells(tmp_path: Path) -> None:
    text = (
        BLOCKCHAIN_HEADER
        + "2021-01-01,355325.0,180502.0,166788994.4,2463610.6,1970085.3,317688400354.0,3139,"
        + "16077362.5\n"
        + "2021-01-02,529709.0,,279981138.0,,2138666.0,317688400354.0,9165,16079350.0\n"
    )
    path = write(tmp_path / "BTC_blockchain_com.csv", text)
    frame = read_metric_csv(path, "BTC")
    assert list(frame.columns) == ["asset", "name", "observed_at", "value"]
    assert len(frame) == 16 - 2
    assert set(frame["asset"]) == {"BTC"}
    assert sorted(frame["name"].unique()) == [
        "blockchain_com.bitcoin_wikipedia_search",
        "blockchain_com.btc_supply",
        "blockchain_com.hash_rate",
        "blockchain_com.miners_revenue_usd",
        "blockchain_com.mining_difficulty",
        "blockchain_com.nr_addresses",
        "blockchain_com.nr_transactions",
        "blockchain_com.usd_on_chain_volume",
    ]
    tx = frame[frame["name"] == "blockchain_com.nr_transactions"]
    assert tx[["observed_at", "value"]].values.tolist() == [[1_609_459_200_000, 180502.0]]
    wiki = frame[frame["name"] == "blockchain_com.bitcoin_wikipedia_search"]
    assert wiki["value"].tolist() == [3139.0, 9165.0]
    assert frame["observed_at"].dtype == "int64"


def test_metric_names_are_snake_case_with_the_source_prefix() -> None:
    assert (
        metric_name("coinmetrics_community", "CapMVRVCur") == "coinmetrics_community.cap_mvrv_cur"
    )
    assert metric_name("coinmetrics_siap", "FlowInExUSD") == "coinmetrics_siap.flow_in_ex_usd"
    assert metric_name("coinmetrics_siap", "NVTAdj90") == "coinmetrics_siap.nvt_adj90"
    assert (
        metric_name("blockchain_com", "USD_OnChain_Volume") == "blockchain_com.usd_on_chain_volume"
    )


@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [
        (
            "2021-01-01,1,2,3,4,5\n2021-01-02,1,n/a,3,4,5\n",
            3,
            "CapMVRVCur",
            "'n/a' is not a number",
        ),
        ("2021-01-01,1,2,3,4,5\n2021-01-01,1,2,3,4,5\n", 3, "date", "duplicate date 2021-01-01"),
        ("2021-01-02,1,2,3,4,5\n2021-01-01,1,2,3,4,5\n", 3, "date", "out of order"),
        ("2021-01-01,1,2,3,4,5\n01/02/2021,1,2,3,4,5\n", 3, "date", "not a YYYY-MM-DD day"),
    ],
)
def test_bad_metric_rows_are_rejected_with_their_line(
    tmp_path: Path, body: str, line: int, field: str, words: str
) -> None:
    path = write(tmp_path / "LINK_coinmetrics_community.csv", COINMETRICS_HEADER + body)
    with pytest.raises(DataValidationError) as caught:
        read_metric_csv(path, "LINK")
    assert (caught.value.line, caught.value.field) == (line, field)
    assert words in caught.value.reason


def test_metric_file_without_a_date_column_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "BTC_x.csv", "day,HashRate\n2021-01-01,1\n")
    with pytest.raises(DataValidationError, match="line 1: missing column 'date'"):
        read_metric_csv(path, "BTC")


def test_columns_that_collide_after_normalising_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "BTC_x.csv", "date,HashRate,hash_rate\n2021-01-01,1,2\n")
    with pytest.raises(DataValidationError, match="line 1: columns 'HashRate' and 'hash_rate'"):
        read_metric_csv(path, "BTC")


async def test_daily_value_is_known_after_its_day_ends_plus_the_lag(
    tmp_path: Path, metric_store: MetricStore
) -> None:
    path = write(tmp_path / "BTC_coinmetrics_siap.csv", "date,HashRate\n2021-01-01,7.5\n")
    written = await import_metric_file(path, metric_store, asset="BTC", publication_lag_ms=LAG)
    assert written == 1
    stored = await metric_store.read_metrics()
    day = 1_609_459_200_000
    assert stored.iloc[0].tolist() == [
        "BTC",
        "coinmetrics_siap.hash_rate",
        day,
        day + DAY + LAG,
        7.5,
    ]
    assert (await metric_store.coverage())[0].source == "BTC_coinmetrics_siap"


def data_folder(root: Path) -> Path:
    """A tiny folder laid out like the shared real-data folder (ohlcv/, onchain/)."""
    write(root / "ohlcv" / "BTC_USDT-1h.csv", HEADER + "".join(candle_lines(5)))
    write(root / "ohlcv" / "ETH_USDT-1h.csv", HEADER + "".join(candle_lines(3, price=20.0)))
    write(root / "ohlcv" / "SOL_USDT-1h.csv", HEADER + "".join(candle_lines(2, price=2.0)))
    write(root / "ohlcv" / "BTC_BUSD-1h.csv", HEADER + "".join(candle_lines(2)))
    write(
        root / "onchain" / "BTC_blockchain_com.csv",
        BLOCKCHAIN_HEADER
        + "2020-01-01,1.0,2.0,3.0,4.0,5.0,6.0,7,8.0\n"
        + "2020-01-02,1.5,,3.5,4.5,5.5,6.5,,8.5\n",
    )
    write(
        root / "onchain" / "LINK_coinmetrics_community.csv",
        COINMETRICS_HEADER + "2020-01-01,132.0,1.5,206.5,448712.9,-5.25\n",
    )
    write(root / "README.md", "not data\n")
    return root


async def test_import_directory_imports_candles_and_metrics(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    root = data_folder(tmp_path / "data")
    seen: list[tuple[int, int]] = []
    report = await import_directory(
        root,
        market_store,
        metric_store,
        publication_lag_ms=LAG,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert [(f.path.name, f.kind, f.series, f.rows) for f in report.files] == [
        ("BTC_USDT-1h.csv", "candles", "BTC/USDT 1h", 5),
        ("ETH_USDT-1h.csv", "candles", "ETH/USDT 1h", 3),
        ("SOL_USDT-1h.csv", "candles", "SOL/USDT 1h", 2),
        ("BTC_blockchain_com.csv", "metrics", "BTC blockchain_com", 14),
        ("LINK_coinmetrics_community.csv", "metrics", "LINK coinmetrics_community", 5),
    ]
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert report.rows == 29 and report.rejected == []
    assert [p.name for p in report.skipped] == ["BTC_BUSD-1h.csv"]

    coverage = {(c.symbol, c.timeframe): c.rows for c in await market_store.coverage("binance")}
    assert coverage == {("BTC/USDT", "1h"): 5, ("ETH/USDT", "1h"): 3, ("SOL/USDT", "1h"): 2}
    eth = await market_store.read_candles("binance", "ETH/USDT", "1h")
    assert eth["close"].tolist() == [21.0, 22.0, 23.0]
    assert await metric_store.assets() == ["BTC", "LINK"]
    assert "coinmetrics_community.cap_mvrv_cur" in await metric_store.names("LINK")
    metrics = await metric_store.read_metrics(["BTC"], ["blockchain_com.hash_rate"])
    assert metrics["known_at"].tolist() == [T0 + DAY + LAG, T0 + 2 * DAY + LAG]

    # Importing again writes the same rows and changes nothing.
    candles_before = await market_store.read_candles("binance", "BTC/USDT", "1h")
    metrics_before = await metric_store.read_metrics()
    again = await import_directory(root, market_store, metric_store, publication_lag_ms=LAG)
    assert again.rows == report.rows
    pd.testing.assert_frame_equal(
        await market_store.read_candles("binance", "BTC/USDT", "1h"), candles_before
    )
    pd.testing.assert_frame_equal(await metric_store.read_metrics(), metrics_before)


async def test_import_directory_stops_at_a_bad_file_with_nothing_of_it_written(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    root = data_folder(tmp_path / "data")
    lines = candle_lines(3, price=20.0)
    lines[2] = f"{T0 + 2 * HOUR},20,19,18,20,1\n"  # high below close
    bad = write(root / "ohlcv" / "ETH_USDT-1h.csv", HEADER + "".join(lines))

    with pytest.raises(DataValidationError) as caught:
        await import_directory(root, market_store, metric_store, publication_lag_ms=LAG)
    assert str(caught.value) == f"{bad} line 4: high 19.0 < max(open, close) 20.0"
    # The first file is committed, the bad one wrote nothing and the later ones were not read.
    assert [(c.symbol, c.rows) for c in await market_store.coverage()] == [("BTC/USDT", 5)]
    assert await metric_store.assets() == []


async def test_import_directory_can_skip_bad_files_and_report_them(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    root = data_folder(tmp_path / "data")
    write(root / "ohlcv" / "ETH_USDT-1h.csv", HEADER + f"{T0},20,21,19,20,oops\n")
    report = await import_directory(
        root, market_store, metric_store, publication_lag_ms=LAG, on_error="skip"
    )
    [failed] = report.rejected
    assert failed.path.name == "ETH_USDT-1h.csv" and failed.rows == 0
    assert failed.error is not None and failed.error.line == 2
    assert [c.symbol for c in await market_store.coverage()] == ["BTC/USDT", "SOL/USDT"]
    assert await metric_store.assets() == ["BTC", "LINK"]


async def test_import_directory_reads_only_the_wanted_coins(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    root = data_folder(tmp_path / "data")
    report = await import_directory(
        root,
        market_store,
        metric_store,
        exchange="binance",
        publication_lag_ms=0,
        coins=["ETH", "DOGE"],
    )
    assert [f.series for f in report.files if f.kind == "candles"] == ["ETH/USDT 1h"]
    assert report.missing_coins == ["DOGE"]
    # Metrics are market-wide candidates, so they are imported whatever the coins.
    assert await metric_store.assets() == ["BTC", "LINK"]


async def test_import_directory_refuses_a_missing_folder(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        await import_directory(
            tmp_path / "absent", market_store, metric_store, publication_lag_ms=0
        )


def test_weekly_candle_file_opening_on_mondays_is_accepted(tmp_path: Path) -> None:
    monday = 1_704_067_200_000  # 2024-01-01, a Monday: Binance's weekly open
    week = 7 * DAY
    lines = [f"{monday + k * week},1,2,0.5,1.5,10\n" for k in range(3)]
    path = write(tmp_path / "BTC_USDT-1w.csv", HEADER + "".join(lines))

    frame = read_candle_csv(path, "1w")

    assert frame["open_time"].tolist() == [monday, monday + week, monday + 2 * week]
    thursday = write(tmp_path / "t.csv", HEADER + f"{monday - 4 * DAY},1,2,0.5,1.5,10\n")
    with pytest.raises(DataValidationError, match=r"line 2: .* not aligned to the 1w grid"):
        read_candle_csv(thursday, "1w")


@pytest.mark.parametrize("column", ["asset", "name", "Name"])
def test_a_metric_column_named_asset_or_name_is_refused_naming_the_file(
    tmp_path: Path, column: str
) -> None:
    path = write(tmp_path / "BTC_x.csv", f"date,{column},hash\n2021-01-01,BTC,1.5\n")

    with pytest.raises(DataValidationError) as caught:
        read_metric_csv(path, "BTC")

    assert (caught.value.source, caught.value.line, caught.value.field) == (str(path), 1, column)
    assert f"{path} line 1: column {column!r} is not allowed" in str(caught.value)


async def test_check_directory_validates_every_file_without_a_store(tmp_path: Path) -> None:
    root = data_folder(tmp_path / "data")

    report = await check_directory(root)

    assert report.dry_run
    assert [(f.path.name, f.rows) for f in report.files] == [
        ("BTC_USDT-1h.csv", 5),
        ("ETH_USDT-1h.csv", 3),
        ("SOL_USDT-1h.csv", 2),
        ("BTC_blockchain_com.csv", 14),
        ("LINK_coinmetrics_community.csv", 5),
    ]
    assert [p.name for p in report.skipped] == ["BTC_BUSD-1h.csv"]
    write(root / "ohlcv" / "ETH_USDT-1h.csv", HEADER + f"{T0},20,19,18,20,1\n")
    with pytest.raises(DataValidationError, match=r"ETH_USDT-1h\.csv line 2"):
        await check_directory(root)
