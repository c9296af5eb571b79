"""``cryptorlpm data ...`` as a user runs it: refusals and errors are one clear line."""

from __future__ import annotations

from pathlib import Path

from bot.store import MarketStore
from bot.timeframes import HOUR_MS, to_ms
from tests.e2e.test_cli import cryptorlpm, write_config
from tests.fakes.binance import FakeBinance, synthetic_candles

START = to_ms("2024-01-01")


def config(tmp_path: Path, market: str = "", extra: str = "") -> Path:
    return write_config(
        tmp_path / "cfg.toml",
        f'[data]\ndir = "{tmp_path / "var"}"\n[market]\ncoins = ["BTC"]\n{market}\n{extra}',
    )


def data_folder(root: Path) -> Path:
    (root / "ohlcv").mkdir(parents=True)
    (root / "onchain").mkdir()
    frame = synthetic_candles(48, start_ms=START, timeframe="1h")
    frame.rename(columns={"open_time": "timestamp"}).to_csv(
        root / "ohlcv" / "BTC_USDT-1h.csv", index=False
    )
    (root / "ohlcv" / "notes.csv").write_text("not,candles\n")
    (root / "onchain" / "BTC_blockchain_com.csv").write_text(
        "date,active_addresses\n2024-01-01,900000\n2024-01-02,910000\n"
    )
    return root


def one_line_error(out: str) -> str:
    """The error message, with the console's wrapping at 200 columns undone."""
    assert "Traceback" not in out, out
    assert out.count("error:") == 1, out
    return " ".join(out[out.index("error:") :].split())


async def test_download_refuses_a_config_whose_source_is_not_the_exchange(tmp_path: Path) -> None:
    path = config(tmp_path)  # market.source defaults to "synthetic"

    code, out = await cryptorlpm("data", "download", "-c", str(path), "--since", "2024-01-01")

    assert code == 2
    line = one_line_error(out)
    assert str(path) in line and "market.source = 'synthetic'" in line
    assert "market.source = 'exchange'" in line
    assert not (tmp_path / "var" / "market.db").exists()


async def test_import_refuses_a_synthetic_config_and_writes_nothing(tmp_path: Path) -> None:
    root = data_folder(tmp_path / "data")
    path = config(tmp_path)

    code, out = await cryptorlpm("data", "import", "-c", str(path), "--dir", str(root))

    assert code == 2
    line = one_line_error(out)
    assert str(path) in line and "market.source = 'synthetic'" in line and "'csv'" in line
    assert "nothing was written" in line
    assert not (tmp_path / "var" / "market.db").exists()


async def test_import_prints_rows_per_file_and_the_skipped_files(tmp_path: Path) -> None:
    root = data_folder(tmp_path / "data")
    path = config(tmp_path, 'source = "csv"\nexchange = "binance"')

    code, out = await cryptorlpm("data", "import", "-c", str(path), "--dir", str(root))

    assert code == 0, out
    lines = out.splitlines()
    assert any("BTC_USDT-1h.csv" in line and "48" in line for line in lines), out
    assert any("BTC_blockchain_com.csv" in line and " 2 " in f"{line} " for line in lines), out
    assert "50 rows written" in out
    assert "skipped" in out and "notes.csv" in out
    # The last 6h bin (00:00 on Jan 3) has all its hours: nothing is still forming here.
    async with await MarketStore.open(tmp_path / "var" / "market.db") as market:
        coverage = {c.timeframe: c.rows for c in await market.coverage()}
    assert coverage == {"1h": 48, "6h": 8}


async def test_a_bad_since_or_until_names_the_option(tmp_path: Path) -> None:
    path = config(tmp_path, 'source = "exchange"\nexchange = "binance"')

    code, out = await cryptorlpm("data", "download", "-c", str(path), "--since", "2020-13-01")
    assert code == 2 and "--since '2020-13-01'" in one_line_error(out)

    code, out = await cryptorlpm(
        "data", "download", "-c", str(path), "--since", "2024-02-01", "--until", "2024-01-01"
    )
    assert code == 2 and "--until 2024-01-01: must be after --since" in one_line_error(out)


async def test_a_bad_exchange_id_or_api_url_is_one_line(tmp_path: Path) -> None:
    market = 'source = "exchange"\nexchange = "binance"'
    for exchange, words in [
        ('[exchange]\nid = "nosuchexchange"', "exchange.id = 'nosuchexchange'"),
        ('[exchange]\napi_url = "localhost:1"', "exchange.api_url = 'localhost:1'"),
    ]:
        path = config(tmp_path, market, exchange)
        code, out = await cryptorlpm("data", "download", "-c", str(path), "--no-metrics")
        assert code == 2, out
        assert words in one_line_error(out)


async def test_a_bad_page_from_the_exchange_is_one_line(tmp_path: Path) -> None:
    async with FakeBinance(tls=False) as exchange:
        candles = synthetic_candles(30, start_ms=START, timeframe="1h")
        candles.loc[5, "high"] = candles.loc[5, "low"] / 2
        exchange.set_candles("BTCUSDT", "1h", candles)
        exchange.now_ms = START + 30 * HOUR_MS
        path = config(
            tmp_path,
            'source = "exchange"\nexchange = "binance"',
            f'[exchange]\napi_url = "{exchange.url}"\nrate_limit = false',
        )
        code, out = await cryptorlpm(
            "data", "download", "-c", str(path), "--since", "2024-01-01", "--no-metrics"
        )
    assert code == 2, out
    line = one_line_error(out)
    assert "binance BTC/USDT 1h page from 2024-01-01T00:00:00Z" in line and "high" in line


async def test_resample_validates_the_target_timeframe_naming_the_option(tmp_path: Path) -> None:
    path = config(tmp_path, 'base_timeframe = "1h"\ntimeframe = "6h"')
    for to, words in [("7x", "expected <positive int><m|h|d|w>"), ("90m", "whole multiple")]:
        code, out = await cryptorlpm("data", "resample", "-c", str(path), "--to", to)
        assert code == 2, out
        line = one_line_error(out)
        assert f"--to '{to}'" in line and words in line


async def test_synth_refuses_a_base_timeframe_it_cannot_generate(tmp_path: Path) -> None:
    path = config(tmp_path, 'base_timeframe = "15m"\ntimeframe = "1h"')

    code, out = await cryptorlpm("data", "synth", "-c", str(path))

    assert code == 2
    line = one_line_error(out)
    assert str(path) in line and "market.base_timeframe = '15m'" in line
    assert not (tmp_path / "var" / "market.db").exists()
