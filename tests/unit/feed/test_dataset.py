"""Dataset steps: each source writes only its own series, and the resample step's reporting."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from rich.progress import Progress

from bot.feed import dataset
from bot.feed.dataset import DatasetConfigError, check_source
from bot.feed.download import download_all
from bot.feed.exchange import ExchangeConfigError, create_exchange
from bot.feed.synthetic import generate_market
from bot.feed.synthetic_csv import read_planted, write_csv_dir
from bot.store import MarketStore, MetricStore
from bot.timeframes import HOUR_MS, to_ms
from config.schema import AppConfig, ExchangeConfig, MarketConfig
from tests.fakes.binance import synthetic_candles


def config(**market: object) -> AppConfig:
    fields = {"coins": ("BTC",), "start": date(2021, 1, 1), "end": date(2021, 1, 3)} | market
    return AppConfig(market=MarketConfig(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("market", "step", "words"),
    [
        ({"source": "synthetic"}, "exchange", "market.source = 'synthetic'"),
        ({"source": "synthetic"}, "csv", "needs market.source = 'csv'"),
        ({"source": "csv", "exchange": "binance"}, "exchange", "market.source = 'csv'"),
        ({"source": "exchange", "exchange": "synthetic"}, "exchange", "market.exchange"),
        ({"source": "synthetic", "exchange": "binance"}, "synthetic", "market.exchange"),
        ({"source": "synthetic", "base_timeframe": "15m"}, "synthetic", "generates 1h candles"),
    ],
)
def test_a_step_refuses_a_config_made_for_another_source(
    market: dict[str, object], step: dataset.Source, words: str
) -> None:
    with pytest.raises(DatasetConfigError, match=words):
        check_source(config(**market), step)


def test_each_source_accepts_its_own_config() -> None:
    check_source(config(), "synthetic")
    check_source(config(source="csv", exchange="binance"), "csv")
    check_source(config(source="exchange", exchange="binance"), "exchange")


async def test_build_synthetic_refuses_a_base_timeframe_it_cannot_generate(
    market_store: MarketStore, metric_store: MetricStore
) -> None:
    cfg = config(base_timeframe="15m", timeframe="1h")

    with pytest.raises(DatasetConfigError, match=r"market.base_timeframe = '15m'.*1h candles only"):
        await dataset.build_synthetic(cfg, market_store, metric_store)

    assert await market_store.coverage() == []


async def test_downloading_into_a_synthetic_config_is_refused_before_any_request(
    market_store: MarketStore, metric_store: MetricStore
) -> None:
    cfg = config()  # synthetic; the exchange below is never contacted
    cfg = cfg.model_copy(update={"exchange": ExchangeConfig(api_url="http://127.0.0.1:9")})
    await dataset.build_synthetic(cfg, market_store, metric_store)
    before = await market_store.coverage()

    with Progress(disable=True) as progress, pytest.raises(DatasetConfigError, match="source"):
        await download_all(
            cfg,
            market_store,
            metric_store,
            since_ms=cfg.market.start_ms,
            until_ms=None,
            with_metrics=True,
            progress=progress,
        )

    assert await market_store.coverage() == before


@pytest.mark.parametrize(
    ("exchange", "words"),
    [
        (ExchangeConfig(id="no_such_exchange"), "exchange.id = 'no_such_exchange'"),
        (ExchangeConfig(api_url="127.0.0.1:8080"), "exchange.api_url = '127.0.0.1:8080'"),
    ],
)
def test_a_bad_exchange_config_is_a_config_error(exchange: ExchangeConfig, words: str) -> None:
    with pytest.raises(ExchangeConfigError, match=words):
        create_exchange(exchange)


async def test_resample_coins_reports_kept_outage_bins_and_the_forming_bin(
    market_store: MarketStore,
) -> None:
    cfg = config(source="csv", exchange="binance")
    start = to_ms("2021-01-01")
    frame = synthetic_candles(20, start_ms=start)  # 00:00 .. 19:00
    frame = frame[frame["open_time"] != start + 3 * HOUR_MS]  # an outage inside the 00:00 bin
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", frame)

    [summary] = await dataset.resample_coins(cfg, market_store)

    assert summary == dataset.ResampleSummary("BTC/USDT", 3, 1, start + 18 * HOUR_MS)
    stored = await market_store.read_candles("binance", "BTC/USDT", "6h")
    assert stored["open_time"].max() == start + 12 * HOUR_MS


async def test_resample_coins_names_the_keys_of_an_impossible_timeframe_pair(
    market_store: MarketStore,
) -> None:
    cfg = config(base_timeframe="4h", timeframe="6h")

    with pytest.raises(DatasetConfigError, match=r"market.timeframe = '6h'.*not a whole multiple"):
        await dataset.resample_coins(cfg, market_store)


async def test_real_data_is_refused_into_stores_holding_the_synthetic_market(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    await dataset.build_synthetic(config(), market_store, metric_store)
    root = tmp_path / "data"
    (root / "ohlcv").mkdir(parents=True)
    (root / "onchain").mkdir()
    before = await market_store.coverage()
    csv = config(source="csv", exchange="binance")  # switched config, same data.dir

    with pytest.raises(DatasetConfigError, match="hold the synthetic market"):
        await dataset.import_csv_dir(csv, root, market_store, metric_store)

    assert await market_store.coverage() == before


async def test_the_synthetic_market_is_refused_into_stores_holding_real_data(
    market_store: MarketStore, metric_store: MetricStore
) -> None:
    candles = synthetic_candles(10, start_ms=to_ms("2021-01-01"))
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", candles)

    with pytest.raises(DatasetConfigError, match="candles of 'binance'"):
        await dataset.build_synthetic(config(), market_store, metric_store)

    assert await market_store.exchanges() == ["binance"]


async def test_the_synthetic_market_written_as_csv_imports_with_its_planted_names(
    tmp_path: Path, market_store: MarketStore, metric_store: MetricStore
) -> None:
    """``data export-synth``'s folder imports like ../shared/data, and planted.json names the
    leading metrics as the store holds them."""
    market = generate_market(["BTC", "LINK"], to_ms("2021-01-01"), to_ms("2021-01-15"), seed=3)
    written = write_csv_dir(market, tmp_path / "synth")
    assert {p.name for p in written} == {
        "BTC_USDT-1h.csv", "LINK_USDT-1h.csv", "BTC_synthetic.csv", "LINK_synthetic.csv",
        "planted.json",
    }  # fmt: skip
    csv = config(source="csv", exchange="binance", coins=("BTC", "LINK"))
    await dataset.import_csv_dir(csv, tmp_path / "synth", market_store, metric_store)
    stored = await metric_store.read_metrics(["LINK"])
    planted = read_planted(tmp_path / "synth" / "planted.json")
    assert set(planted["LINK"]) <= set(stored["name"]) and len(planted["LINK"]) == 12
    candles = await market_store.read_candles("binance", "LINK/USDT", "1h")
    assert candles["close"].tolist() == market.candles["LINK"]["close"].tolist()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json: not a planted\.json"):
        read_planted(tmp_path / "bad.json")
