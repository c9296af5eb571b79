"""``cryptorlpm experiment paper`` end to end on a small generated ohlcv/ + onchain/ folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bot.feed.synthetic import generate_market
from bot.timeframes import to_ms
from tests.e2e.test_cli import cryptorlpm

COINS = ("BTC", "STORJ", "BLZ", "LINK")
TINY_AGENTS = """
[agents]
window = 8
num_envs = 8
episode_length = 32
[agents.eam]
total_env_steps = 800
gamma = 0.0
learning_starts = 100
batch_size = 32
buffer_size = 2000
target_update_interval = 20
channels = [4, 4, 4]
hidden = 8
eval_interval = 20
[agents.sam]
total_env_steps = 800
learning_starts = 100
batch_size = 32
buffer_size = 2000
target_update_interval = 20
channels = [4, 4, 4]
hidden = 8
eval_interval = 20
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ohlcv/{SYM}_USDT-1h.csv for the paper's coins and onchain/BTC_synthetic.csv (daily)."""
    root = tmp_path_factory.mktemp("shared_like")
    market = generate_market(list(COINS), to_ms("2021-01-01"), to_ms("2022-01-01"), seed=5)
    (root / "ohlcv").mkdir()
    (root / "onchain").mkdir()
    for coin, frame in market.candles.items():
        frame.rename(columns={"open_time": "timestamp"}).to_csv(
            root / "ohlcv" / f"{coin}_USDT-1h.csv", index=False
        )
    btc = market.metrics[market.metrics["asset"] == "BTC"]
    wide = btc.pivot(index="observed_at", columns="name", values="value")
    wide.index = pd.to_datetime(wide.index, unit="ms", utc=True).strftime("%Y-%m-%d")
    wide.index.name = "date"
    wide.iloc[:, : min(8, wide.shape[1])].round(6).to_csv(root / "onchain" / "BTC_synthetic.csv")
    assert np.isfinite(wide.to_numpy()).all()
    return root


@pytest.mark.slow  # ~55 s loaded (4 coins x 2 seeds); the demo e2e covers the pipeline
async def test_paper_experiment_writes_results_for_portfolios_a_b_c(
    tmp_path: Path, data_dir: Path
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(Path("config/paper.toml").read_text().split("[training]")[0] + TINY_AGENTS)
    out = tmp_path / "out"
    code, text = await cryptorlpm(
        "experiment",
        "paper",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--seeds",
        "2",
        "--train",
        "2021-01-01:2021-08-31",
        "--val",
        "2021-09-01:2021-10-31",
        "--test",
        "2021-11-01:2021-12-31",
        "-c",
        str(config),
    )
    assert code == 0, text
    results = json.loads((out / "results.json").read_text())
    assert set(results["portfolios"]) == {"a", "b", "c"}
    c = results["portfolios"]["c"]
    assert {"cryptorlpm", "bh_BTC", "bh_STORJ", "bh_BLZ", "bh_LINK", "equal_weight"} <= set(c)
    assert [s["seed"] for s in c["cryptorlpm"]["seeds"]] == [1, 2]
    arrs = sorted(s["arr"] for s in c["cryptorlpm"]["seeds"])
    assert c["cryptorlpm"]["arr"] == pytest.approx(sum(arrs) / 2)  # median of two
    assert {"arr", "drr", "sortino", "sharpe", "mdd"} <= set(c["bh_BTC"])
    assert {"torch", "numpy", "cpu", "torch_cpu_capability"} <= set(results["runtime"])
    table = (out / "table.md").read_text()
    assert "## Portfolio a: BTC, STORJ" in table and "equal_weight" in table
    assert (out / "portfolio_c" / "cumulative_returns.png").exists()


async def test_a_test_window_beyond_the_data_is_said_plainly(
    tmp_path: Path, data_dir: Path
) -> None:
    code, text = await cryptorlpm(
        "experiment",
        "paper",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "o"),
        "--seeds",
        "1",
    )
    assert code == 2
    assert "lies beyond the data" in text and "Traceback" not in text


async def test_windows_without_data_stop_the_experiment_before_any_training(
    tmp_path: Path, data_dir: Path
) -> None:
    code, text = await cryptorlpm(
        "experiment",
        "paper",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "o"),
        "--seeds",
        "1",
        "--train",
        "2020-01-01:2020-08-31",
        "--val",
        "2020-09-01:2020-10-31",
        "--test",
        "2020-11-01:2020-12-31",
    )
    assert code == 2 and "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "windows.train 2020-01-01..2020-08-31 has no 6h bars" in errors[0]
    assert "training" not in text.split("error:")[0]  # stopped before the training step
    assert not (tmp_path / "o" / "models").exists()


@pytest.mark.slow  # trains 4 coins' MARS ensembles (2 seeds together) and replays a, b, c
async def test_paper_experiment_runs_mars_with_its_manager_and_plots_the_controller(
    tmp_path: Path, data_dir: Path
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(Path("config/paper.toml").read_text().split("[training]")[0] + TINY_AGENTS)
    out = tmp_path / "out"
    code, text = await cryptorlpm(
        "experiment", "paper", "--data-dir", str(data_dir), "--out", str(out), "--seeds", "2",
        "--policy", "mars+manager", "--train", "2021-01-01:2021-08-31",
        "--val", "2021-09-01:2021-10-31", "--test", "2021-11-01:2021-12-31", "-c", str(config),
    )  # fmt: skip
    assert code == 0, text
    results = json.loads((out / "results.json").read_text())
    a = results["portfolios"]["a"]
    assert [s["seed"] for s in a["mars+manager"]["seeds"]] == [1, 2] and "equal_weight" in a
    assert "mars+manager = median over seeds" in (out / "table.md").read_text()
    assert (out / "portfolio_a" / "controller.png").stat().st_size > 0


async def test_paper_experiment_refuses_an_unknown_policy_in_one_line(tmp_path: Path) -> None:
    code, text = await cryptorlpm(
        "experiment", "paper", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
        "--policy", "marz",
    )  # fmt: skip
    assert code == 2 and "--policy 'marz': expected one of cryptorlpm, mars, mars+manager" in text
    assert "Traceback" not in text
