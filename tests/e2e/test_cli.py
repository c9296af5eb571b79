"""The ``cryptorlpm`` command as a user runs it: a real process, real stores, fake servers."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from bot.store import MarketStore, MetricStore
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from tests.fakes.binance import FakeBinance, synthetic_candles
from tests.fakes.santiment import FakeSantiment

START = to_ms("2024-01-01")


async def cryptorlpm(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI in a subprocess, its output piped as in a script; return its exit code and
    combined output."""
    import os

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if k != "COLUMNS"}, **(env or {})},
    )
    # A guard against a hung command only: a loaded machine may take minutes for the demo.
    out, _ = await asyncio.wait_for(process.communicate(), timeout=900)
    return process.returncode or 0, out.decode()


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


async def test_download_fills_both_stores_from_the_exchange_and_santiment(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "dl.toml",
        f"""
[data]
dir = "{tmp_path / "var"}"
[market]
source = "exchange"
exchange = "binance"
coins = ["BTC", "ETH"]
base_timeframe = "1h"
timeframe = "6h"
start = 2024-01-01
end = 2024-03-01
[exchange]
rate_limit = false
retry_base_s = 0.01
[santiment]
slugs = {{ BTC = "bitcoin" }}
metrics = ["daily_active_addresses", "dev_activity"]
retries = 0
""",
    )
    async with FakeBinance(tls=False) as exchange, FakeSantiment() as santiment:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            exchange.set_candles(
                symbol, "1h", synthetic_candles(24 * 10 + 1, start_ms=START, timeframe="1h")
            )
        exchange.now_ms = START + 24 * 10 * HOUR_MS + 60_000
        exchange.inject("/api/v3/klines", 429, headers={"Retry-After": "0"}, times=1)
        santiment.add_series(
            "bitcoin", "daily_active_addresses", {START + d * DAY_MS: 1000.0 + d for d in range(10)}
        )
        santiment.restrict("dev_activity")
        env = {
            "CRYPTORLPM__EXCHANGE__API_URL": exchange.url,
            "CRYPTORLPM__SANTIMENT__API_URL": santiment.url,
        }
        code, out = await cryptorlpm(
            "data",
            "download",
            "-c",
            str(config),
            "--since",
            "2024-01-01",
            "--until",
            "2024-01-11",
            env=env,
        )
    assert code == 0, out
    async with await MarketStore.open(tmp_path / "var" / "market.db") as market:
        coverage = {(c.symbol, c.timeframe): c for c in await market.coverage()}
    assert coverage[("BTC/USDT", "1h")].rows == 240 and coverage[("BTC/USDT", "1h")].gaps == 0
    assert coverage[("ETH/USDT", "6h")].rows == 40
    async with await MetricStore.open(tmp_path / "var" / "metrics.db") as metrics:
        frame = await metrics.read_metrics(assets=["BTC"])
    assert frame["name"].unique().tolist() == ["daily_active_addresses"]
    assert (frame["known_at"] == frame["observed_at"] + DAY_MS + HOUR_MS).all()
    assert "dev_activity" in out  # the restricted metric is named, not silently dropped


async def test_import_then_show_reports_coverage(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "ohlcv").mkdir(parents=True)
    (root / "onchain").mkdir()
    frame = synthetic_candles(48, start_ms=START, timeframe="1h")
    frame.rename(columns={"open_time": "timestamp"}).to_csv(
        root / "ohlcv" / "BTC_USDT-1h.csv", index=False
    )
    (root / "onchain" / "BTC_blockchain_com.csv").write_text(
        "date,active_addresses,hash_rate\n2024-01-01,900000,1.5e20\n2024-01-02,,1.6e20\n"
    )
    config = write_config(
        tmp_path / "imp.toml",
        f"""
[data]
dir = "{tmp_path / "var"}"
[market]
source = "csv"
exchange = "binance"
coins = ["BTC"]
""",
    )
    code, out = await cryptorlpm("data", "import", "-c", str(config), "--dir", str(root))
    assert code == 0, out
    code, out = await cryptorlpm("data", "show", "-c", str(config))
    assert code == 0, out
    assert "BTC/USDT" in out and "48" in out and "8" in out  # 48 1h rows and 8 6h bars


async def test_import_of_a_corrupt_file_names_the_line_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "ohlcv").mkdir(parents=True)
    (root / "ohlcv" / "BTC_USDT-1h.csv").write_text(
        "timestamp,open,high,low,close,volume\n"
        f"{START},10,11,9,10.5,1\n{START + HOUR_MS},10,9,11,10.5,1\n"
    )
    config = write_config(
        tmp_path / "imp.toml",
        f'[data]\ndir = "{tmp_path / "var"}"\n[market]\nsource = "csv"\nexchange = "binance"\n',
    )
    code, out = await cryptorlpm("data", "import", "-c", str(config), "--dir", str(root))
    assert code == 2
    assert "BTC_USDT-1h.csv line 3" in out
    async with await MarketStore.open(tmp_path / "var" / "market.db") as market:
        assert await market.coverage() == []


async def test_a_bad_config_fails_with_one_clear_message(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", '[market]\ntimeframe = "6 hours"\n')
    code, out = await cryptorlpm("data", "show", "-c", str(config))
    assert code == 2
    assert "market.timeframe" in out and "'6 hours'" in out and "Traceback" not in out


async def test_demo_runs_the_whole_pipeline_and_writes_the_report(tmp_path: Path) -> None:
    from tests.e2e.test_experiment import TINY_AGENTS

    config = write_config(
        tmp_path / "demo.toml",
        f"""
[data]
dir = "{tmp_path / "var"}"
[market]
coins = ["BTC", "ETH"]
start = 2021-01-01
end = 2021-12-31
[windows]
train = {{ start = 2021-01-01, end = 2021-08-31 }}
validation = {{ start = 2021-09-01, end = 2021-10-31 }}
test = {{ start = 2021-11-01, end = 2021-12-31 }}
[training]
seeds = [1, 2]
models_dir = "{tmp_path / "models"}"
"""
        + TINY_AGENTS,
    )
    out = tmp_path / "run"
    code, text = await cryptorlpm("demo", "-c", str(config), "--out", str(out))
    assert code == 0, text
    for step in ("synthetic market", "feature selection", "training", "backtest", "report"):
        assert step in text
    assert "summary.html" in text and "cryptorlpm ARR per seed" in text
    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"cryptorlpm", "bh_BTC", "bh_ETH", "equal_weight", "equal_weight_bh"} <= set(
        metrics["runs"]
    )
    assert (report / "cumulative_returns.png").exists() and (report / "summary.md").exists()
    assert (out / "features" / "BTC" / "correlation_heatmap.png").exists()
    async with await MarketStore.open(tmp_path / "var" / "market.db") as market:
        coverage = {(c.symbol, c.timeframe): c for c in await market.coverage()}
    assert coverage[("BTC/USDT", "1h")].rows == 365 * 24
    # what drove the vote's decisions: a plot per coin and the attributions behind them
    assert (report / "attribution_BTC.png").exists() and (report / "attribution_ETH.png").exists()
    assert "What drove the decisions" in (report / "summary.md").read_text()
    explained = pd.read_csv(report / "explanations.csv")
    assert set(explained["coin"]) == {"BTC", "ETH"} and explained["attribution"].abs().sum() > 0

    # ... and the explain command on the run folder: one decision, a range, bad input
    code, text = await cryptorlpm(
        "explain", str(out), "-c", str(config), "--coin", "btc", "--at", "2021-12-01T10:00"
    )
    assert code == 0, text
    assert "BTC at 2021-12-01T" in text and "rank" in text and "attribution" in text
    assert len(list((out / "explain").glob("explain_BTC_20211201T*.png"))) == 1
    code, text = await cryptorlpm(
        "explain", str(out), "-c", str(config), "--from", "2021-11-15", "--to", "2021-12-15"
    )
    assert code == 0, text
    assert "BTC:" in text and "ETH:" in text and "ranked first" in text
    assert (out / "explain" / "explain_ETH.png").exists()
    for args, wanted in (
        (["--coin", "DOGE"], "--coin DOGE: the run in"),
        (["--at", "2020-01-01"], "--at 2020-01-01T00:00:00Z: outside the run"),
        (["--at", "yesterday"], "--at 'yesterday': expected a UTC date"),
    ):
        code, text = await cryptorlpm("explain", str(out), "-c", str(config), *args)
        assert code == 2 and wanted in text and "Traceback" not in text, text
    code, text = await cryptorlpm("explain", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere: no such folder" in text and "Traceback" not in text


@pytest.mark.parametrize("command", [["--help"], ["data", "--help"]])
async def test_help_lists_the_commands(command: list[str]) -> None:
    code, out = await cryptorlpm(*command)
    assert code == 0 and "Usage" in out


async def test_features_select_writes_the_report_and_heatmap(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "feat.toml",
        f"""
[data]
dir = "{tmp_path / "var"}"
[market]
coins = ["BTC", "LINK"]
start = 2020-01-01
end = 2021-06-30
[windows]
train = {{ start = 2020-01-01, end = 2020-12-31 }}
validation = {{ start = 2021-01-01, end = 2021-03-31 }}
test = {{ start = 2021-04-01, end = 2021-06-30 }}
""",
    )
    out = tmp_path / "report"
    code, text = await cryptorlpm(
        "features", "select", "--coin", "LINK", "-c", str(config), "--out", str(out)
    )
    assert code == 0, text
    assert "10 chosen" in text and "PCA: k =" in text
    assert (out / "selection.json").stat().st_size > 0
    assert (out / "correlation_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    code, text = await cryptorlpm("features", "select", "--coin", "DOGE", "-c", str(config))
    assert code == 2 and "not one of the configured coins" in text
