"""Bad input as a user types it: one line naming what to fix, exit code 2, never a traceback.

Each test runs ``cryptorlpm`` in a subprocess with its output piped (as in a script or a CI log),
so it also proves that a piped error line is not wrapped at 80 columns.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.e2e.test_cli import cryptorlpm, write_config
from tests.e2e.test_experiment import TINY_AGENTS


def the_line(code: int, out: str) -> str:
    """The one line a failing command printed (asserting it failed with exit code 2)."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2, out
    assert "Traceback" not in out, out
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), out
    return lines[0]


def closed_port() -> int:
    """A local port nothing listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def synthetic(tmp_path: Path, extra: str = "", *, data: str = "var") -> Path:
    """A small synthetic-market config (one coin, three months of 6h bars)."""
    return write_config(
        tmp_path / "cfg.toml",
        f"""
[data]
dir = "{tmp_path / data}"
[market]
coins = ["BTC"]
start = 2021-01-01
end = 2021-03-31
[windows]
train = {{ start = 2021-01-01, end = 2021-02-15 }}
validation = {{ start = 2021-02-16, end = 2021-03-05 }}
test = {{ start = 2021-03-06, end = 2021-03-31 }}
[training]
seeds = [1]
models_dir = "{tmp_path / "models"}"
{extra}""",
    )


async def test_live_paper_with_the_exchange_unreachable_stops_in_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "live.toml",
        f"""
[data]
dir = "{tmp_path / "var"}"
[market]
source = "exchange"
exchange = "binance"
coins = ["BTC", "ETH"]
timeframe = "15m"
base_timeframe = "15m"
[exchange]
api_url = "http://127.0.0.1:{closed_port()}"
[live]
policy = "equal_weight"
""",
    )
    code, out = await cryptorlpm("live", "--paper", "-c", str(config))
    line = the_line(code, out)
    assert "cannot reach binance" in line and "the daemon did not start" in line
    assert "[exchange].api_url" in line


async def test_live_with_no_trained_module_refuses_unless_a_policy_needs_none(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "live.toml",
        f"""
[data]
dir = "{tmp_path / "var"}"
[market]
source = "exchange"
exchange = "binance"
coins = ["BTC", "ETH"]
timeframe = "15m"
base_timeframe = "15m"
[exchange]
api_url = "http://127.0.0.1:{closed_port()}"
[training]
models_dir = "{tmp_path / "models"}"
""",
    )
    code, out = await cryptorlpm("live", "--paper", "-c", str(config))
    line = the_line(code, out)
    assert '[live].policy = "vote"' in line and str(tmp_path / "models") in line
    assert '"hold" (cash only)' in line and '"equal_weight"' in line
    assert not (tmp_path / "var").exists()  # refused before connecting or creating anything

    # A cash-only policy needs no module: the daemon goes on (to the unreachable exchange).
    code, out = await cryptorlpm(
        "live", "--paper", "-c", str(config), env={"CRYPTORLPM__LIVE__POLICY": "hold"}
    )
    assert "cannot reach binance" in the_line(code, out)

    # MARS needs an ensemble per coin, and says how to train one.
    code, out = await cryptorlpm(
        "live", "--paper", "-c", str(config), env={"CRYPTORLPM__LIVE__POLICY": "mars+manager"}
    )
    line = the_line(code, out)
    assert "[live].policy = 'mars+manager' needs a MARS ensemble" in line
    assert str(tmp_path / "models" / "mars") in line and "train --coin BTC --mars" in line


async def test_live_max_cycles_zero_is_refused_like_the_file_would_refuse_it(
    tmp_path: Path,
) -> None:
    config = synthetic(tmp_path)
    code, out = await cryptorlpm("live", "--paper", "--max-cycles", "0", "-c", str(config))
    line = the_line(code, out)
    assert "--max-cycles (live.max_cycles) = 0" in line and "greater than or equal to 1" in line


async def test_a_config_option_pointing_at_a_folder_is_one_line(tmp_path: Path) -> None:
    code, out = await cryptorlpm("data", "show", "-c", str(tmp_path))
    assert the_line(code, out) == f"error: config file {tmp_path} is a folder; expected a TOML file"


async def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[market]\ncoins = ["BTC"]  # café\n'.encode("latin-1"))
    code, out = await cryptorlpm("data", "show", "-c", str(path))
    line = the_line(code, out)
    assert str(path) in line and "not UTF-8" in line and "0xe9" in line


async def test_an_environment_override_error_names_the_variable_not_the_file(
    tmp_path: Path,
) -> None:
    config = synthetic(tmp_path)
    code, out = await cryptorlpm(
        "data", "show", "-c", str(config), env={"CRYPTORLPM__MARKET__TIMEFRAME": "6 hours"}
    )
    line = the_line(code, out)
    assert "environment CRYPTORLPM__MARKET__TIMEFRAME (market.timeframe) = '6 hours'" in line
    assert str(config) not in line


async def test_a_read_command_on_a_missing_data_dir_fails_and_creates_nothing(
    tmp_path: Path,
) -> None:
    config = synthetic(tmp_path, data="nowhere")
    for command in (["data", "show"], ["train", "--coin", "BTC"]):
        code, out = await cryptorlpm(*command, "-c", str(config))
        line = the_line(code, out)
        assert f"data dir {tmp_path / 'nowhere'} does not exist" in line
    assert not (tmp_path / "nowhere").exists()


async def test_importing_a_folder_without_data_files_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "download"
    (folder / "ohlcv").mkdir(parents=True)
    (folder / "ohlcv" / "btc prices.xlsx").write_bytes(b"PK")
    config = write_config(
        tmp_path / "csv.toml",
        f'[data]\ndir = "{tmp_path / "var"}"\n[market]\nsource = "csv"\nexchange = "binance"\n',
    )
    code, out = await cryptorlpm("data", "import", "-c", str(config), "--dir", str(folder))
    line = the_line(code, out)
    assert "no data files to import" in line and "ohlcv/<COIN>_USDT-<timeframe>.csv" in line
    assert "btc prices.xlsx" in line
    assert not (tmp_path / "var").exists()


async def test_a_training_window_before_the_data_is_one_line(tmp_path: Path) -> None:
    config = synthetic(tmp_path)
    code, out = await cryptorlpm("data", "synth", "-c", str(config))
    assert code == 0, out
    early = config.read_text().replace(
        "start = 2021-01-01, end = 2021-02-15", "start = 2019-01-01, end = 2019-06-30"
    )
    (tmp_path / "early.toml").write_text(early)
    code, out = await cryptorlpm("train", "--coin", "BTC", "-c", str(tmp_path / "early.toml"))
    line = the_line(code, out)
    assert "windows.train 2019-01-01..2019-06-30 has no 6h bars of BTC/USDT" in line
    assert "2021-01-01 06:00" in line
    assert not (tmp_path / "models").exists()


async def test_a_demo_whose_test_window_has_no_data_stops_before_training(tmp_path: Path) -> None:
    config = synthetic(tmp_path, TINY_AGENTS)
    text = config.read_text().replace(
        "test = { start = 2021-03-06, end = 2021-03-31 }",
        "test = { start = 2021-06-01, end = 2021-06-30 }",
    )
    config.write_text(text)
    code, out = await cryptorlpm("demo", "-c", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and "Traceback" not in out, out
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "windows.test 2021-06-01..2021-06-30 has no 6h bars" in error[0]
    assert "3/5 training" not in out  # the steps shown stop before training
    assert not (tmp_path / "run" / "models").exists()


async def test_piped_output_is_not_wrapped_at_80_columns(tmp_path: Path) -> None:
    missing = tmp_path / ("a-config-name-long-enough-to-pass-eighty-columns-" * 3 + ".toml")
    code, out = await cryptorlpm("data", "show", "-c", str(missing))
    line = the_line(code, out)  # one line although far longer than 80 columns
    assert len(line) > 160 and line.endswith("does not exist")


def registered_model(root: Path, model_id: str) -> None:
    """A model card as the registry writes it (what ``models list`` reads)."""
    folder = root / "BTC" / model_id
    folder.mkdir(parents=True)
    card = {
        "id": model_id,
        "coin": "BTC",
        "seed": 1,
        "created_at": "2026-11-30T12:34:56+00:00",
        "feature_schema": {"timeframe": "6h"},
        "scores": {"validation": {"sam": 0.0123, "buy_and_hold": -0.0456}},
    }
    (folder / "cm.json").write_text(json.dumps(card))


@pytest.mark.parametrize("columns", [None, "60"], ids=["piped", "narrow-terminal-width"])
async def test_model_ids_are_never_cut(tmp_path: Path, columns: str | None) -> None:
    model_id = "BTC-20261130T123456-s1"
    registered_model(tmp_path / "models", model_id)
    config = synthetic(tmp_path)
    env = {"COLUMNS": columns} if columns else None
    code, out = await cryptorlpm("models", "list", "-c", str(config), env=env)
    assert code == 0, out
    row = next(line for line in out.splitlines() if "BTC" in line and "s1" in line)
    assert f"{model_id} *" in row  # whole, on one line, marked active
    if columns is None:
        assert "2026-11-30T12:34:56" in row  # nothing else cut either when piped
