"""``cryptorlpm experiment walkforward`` end to end on a small generated ohlcv/ + onchain/ folder:
folds refit on data known then, every baseline, statistics and reports written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.e2e.test_cli import cryptorlpm
from tests.e2e.test_experiment import TINY_AGENTS, data_dir  # noqa: F401 (fixture)

SEQUENTIAL = '\n[compute]\nbackend = "sequential"\n'


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wf_cfg") / "tiny.toml"
    paper = Path("config/paper.toml").read_text().split("[training]")[0]
    path.write_text(paper + TINY_AGENTS + SEQUENTIAL)
    return path


async def test_walkforward_writes_a_table_with_intervals_dsr_pbo_and_fold_bars(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    tiny_config: Path,
) -> None:
    out = tmp_path / "wf"

    async def walkforward(to: Path, *options: str) -> str:
        """The vote on portfolio a over two folds, with ``options``; its output."""
        code, text = await cryptorlpm(
            "experiment", "walkforward", "--data-dir", str(data_dir), "--out", str(to),
            "--policy", "cryptorlpm", "--retrain-every", "90", "--train-days", "90",
            "--val-days", "30", "--portfolio", "a", "--start", "2021-07-02",
            "--end", "2021-12-29", "--config", str(tiny_config), *options,
        )  # fmt: skip
        assert code == 0, text
        return text

    text = await walkforward(out, "--seeds", "2")
    rules = [line for line in text.splitlines() if "──" in line]
    assert rules and max(map(len, rules)) <= 100, "a section rule filled a pipe's 10,000 columns"
    results = json.loads((out / "results.json").read_text())
    assert [f["span"] for f in results["folds"]] == [
        "2021-07-02..2021-09-30",
        "2021-09-30..2021-12-29",
    ]
    assert results["trainings"] == len(results["folds"]) * 2 * 2  # folds x coins x seeds
    assert results["trials"]["total"] == 2
    runs = results["portfolios"]["a"]["runs"]
    assert list(runs) == [
        "cryptorlpm", "bh_BTC", "bh_STORJ", "equal_weight", "equal_weight_bh", "trend_filter",
    ]  # fmt: skip
    vote = runs["cryptorlpm"]
    for key in ("arr", "sortino", "sharpe"):
        ci = runs["equal_weight"]["ci"][key]
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert 0.0 <= vote["dsr"]["dsr"] <= 1.0 and vote["dsr"]["trials"] == 2
    assert 0.0 <= vote["pbo"]["pbo"] <= 1.0
    assert set(vote["edge"]) == {"equal_weight", "trend_filter"}
    assert set(vote["diagnostics"]["mean"]) == {"BTC", "STORJ"}
    folds = results["portfolios"]["a"]["folds"]
    assert len(folds) == len(results["folds"]) and "trend_filter" in folds[0]
    for name in ("folds.png", "timing.png", "cumulative_returns.png", "summary.html"):
        assert (out / "portfolio_a" / name).stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "| cryptorlpm |" in table and "DSR" in table and "PBO" in table
    # each seed's figure beside the median's: the training noise one seed carries
    seeds = {s["seed"]: s["arr"] for s in vote["seeds"]}
    assert f"- cryptorlpm by seed, ARR: 1: {seeds[1]:+.1%}" in table
    assert f"spread {100 * (max(seeds.values()) - min(seeds.values())):.1f} points" in table
    # what it ran on: trainings from two runtimes are two draws, not a reproduction
    assert {"torch", "numpy", "cpu", "torch_cpu_capability"} <= set(results["runtime"])
    assert f"Ran on {results['runtime']['cpu']}" in table
    # every fold's modules were trained on data that ended at its refit
    cards = sorted((out / "models").glob("fold_*/*/*/cm.json"))
    assert len(cards) == results["trainings"]
    for card_path in cards:
        card = json.loads(card_path.read_text())
        fold = int(card_path.parts[-4].split("_")[1])
        assert card["data_ranges"]["bars"]["ms"][1] <= results["folds"][fold]["start_ms"]
    # the validation score each module's checkpoint was chosen by, kept for the report's
    # validation-vs-test line (2 seeds rank nothing: no line here)
    from backtest.wf_report import load_walkforward

    kept = load_walkforward(out)[0].validation
    assert len(kept) == results["trainings"] and all(math.isfinite(v) for v in kept.values())
    assert "validation vs test" not in table
    # the sleeves' return split into exposure and timing, timing tested against shifted positions
    timed = vote["timing"]
    assert set(timed["coins"]) == {"BTC", "STORJ"}
    mean = timed["portfolio"]["policy"]
    assert mean["decisions"] > 0 and mean["seeds"] == 2 and 0.0 < mean["p_value"] <= 1.0
    saved = load_walkforward(out)[0]
    sleeves = []  # mean(w r) per seed and coin, from the decisions and closes themselves
    for decisions in saved.portfolios[0].decisions.values():
        for coin in ("BTC", "STORJ"):
            closes = saved.closes[coin]
            start, end = results["folds"][0]["start_ms"], results["folds"][-1]["end_ms"]
            w = {d.ts: d.coin_weight for d in decisions if d.coin == coin and start <= d.ts < end}
            step = 6 * 3600 * 1000
            pairs = [
                (w[t], closes[t + step] / closes[t] - 1) for t in w if t + step in closes.index
            ]
            sleeves.append(sum(a * b for a, b in pairs) / len(pairs))
    assert mean["sleeve"] == pytest.approx(sum(sleeves) / len(sleeves) * timed["bars_per_year"])
    assert timed["portfolio"]["trend_filter"]["decisions"] == mean["decisions"]
    assert "- timing, per year before costs" in table and "  - STORJ held" in table
    # the linear probe of the same inputs over the same folds
    code, text = await cryptorlpm("experiment", "probe", str(out), "--config", str(tiny_config))
    assert code == 0, text
    probed = json.loads((out / "probe.json").read_text())
    assert probed["horizons"] == [1, 28] and probed["inputs"] == [
        "dru",
        "normalised",
        "selected",
        "own",
    ]
    assert probed["folds"] == [f["span"] for f in results["folds"]]
    for by_horizon in probed["portfolios"]["a"].values():
        for row in by_horizon.values():
            assert row["portfolio"]["decisions"] == mean["decisions"]
            assert set(row["coins"]) == {"BTC", "STORJ"}
    assert "| a | dru | 28 |" in (out / "probe.md").read_text()
    (tmp_path / "planted.json").write_text("not json")
    code, text = await cryptorlpm(
        "experiment", "probe", str(out), "--config", str(tiny_config), "--planted",
        str(tmp_path / "planted.json"),
    )  # fmt: skip
    assert code == 2 and "not a planted.json" in text and "Traceback" not in text
    code, text = await cryptorlpm("experiment", "probe", str(tmp_path))
    assert code == 2 and "no runs.pkl" in text and "Traceback" not in text
    hourly = tmp_path / "hourly.toml"
    hourly.write_text(tiny_config.read_text().replace('timeframe = "6h"', 'timeframe = "1h"', 1))
    code, text = await cryptorlpm("experiment", "probe", str(out), "--config", str(hourly))
    assert code == 2 and "ran on 6h" in text and "Traceback" not in text
    # The same two seeds as one seed bag: the trained modules reused, one run, named by seed 1
    bagged = tmp_path / "bag"
    reuse = ("--models-dir", str(out / "models"))
    text = await walkforward(bagged, "--seeds", "2", "--bag", "2", *reuse)
    bag = json.loads((bagged / "results.json").read_text())
    assert bag["spec"]["bag"] == 2 and bag["trials"]["total"] == 1
    assert f"{results['trainings']} trainings ({results['trainings']} reused" in text
    assert [s["seed"] for s in bag["portfolios"]["a"]["runs"]["cryptorlpm"]["seeds"]] == [1]
    table = (bagged / "table.md").read_text()
    assert "Seed bags of 2" in table and "1 = seeds 1, 2" in table
    assert "- cryptorlpm by bag, ARR: 1: " in table
    # seed 2 alone (--first-seed): its training reused, the same figures as in the first run
    second = tmp_path / "second"
    text = await walkforward(second, "--seeds", "1", "--first-seed", "2", *reuse)
    alone = json.loads((second / "results.json").read_text())
    assert alone["spec"]["seeds"] == [2] and "reused" in text
    assert alone["portfolios"]["a"]["runs"]["cryptorlpm"]["seeds"] == [
        s for s in vote["seeds"] if s["seed"] == 2
    ]


async def test_the_synthetic_market_exports_as_a_data_folder_with_its_truth(
    tmp_path: Path,
) -> None:
    out = tmp_path / "synth"
    args = ["data", "export-synth", "--out", str(out), "--coin", "BTC", "--coin", "LINK"]
    code, text = await cryptorlpm(*args, "--start", "2021-01-01", "--end", "2021-01-08")
    assert code == 0, text
    assert sorted(p.name for p in (out / "onchain").iterdir()) == [
        "BTC_synthetic.csv", "LINK_synthetic.csv",
    ]  # fmt: skip
    truth = json.loads((out / "planted.json").read_text())
    assert set(truth["planted"]) == {"BTC", "LINK"} and len(truth["planted"]["BTC"]) == 12
    code, text = await cryptorlpm(*args)
    assert code == 2 and "not an empty folder" in text and "Traceback" not in text


async def test_an_unknown_policy_is_a_one_line_error(tmp_path: Path, data_dir: Path) -> None:  # noqa: F811
    code, text = await cryptorlpm(
        "experiment", "walkforward", "--data-dir", str(data_dir), "--out", str(tmp_path),
        "--policy", "magic",
    )  # fmt: skip
    assert code == 2 and "unknown policy 'magic'" in text and "Traceback" not in text


async def test_a_bag_that_does_not_divide_the_seeds_is_a_one_line_error(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
) -> None:
    code, text = await cryptorlpm(
        "experiment", "walkforward", "--data-dir", str(data_dir), "--out", str(tmp_path),
        "--seeds", "5", "--bag", "3",
    )  # fmt: skip
    assert code == 2 and "--bag 3: must divide --seeds 5" in text and "Traceback" not in text


async def test_a_first_fold_without_enough_training_data_is_said_plainly(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    tiny_config: Path,
) -> None:
    code, text = await cryptorlpm(
        "experiment", "walkforward", "--data-dir", str(data_dir), "--out", str(tmp_path),
        "--start", "2021-02-15", "--portfolio", "a", "--config", str(tiny_config),
    )  # fmt: skip
    assert code == 2 and "fewer than 30" in text and "Traceback" not in text


async def test_walkforward_runs_mars_and_mars_manager_reusing_the_ensembles_it_trained(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    tiny_config: Path,
) -> None:
    models = tmp_path / "models"
    args = [
        "--data-dir", str(data_dir), "--retrain-every", "90", "--train-days", "90",
        "--val-days", "30", "--seeds", "2", "--portfolio", "a", "--start", "2021-07-02",
        "--end", "2021-12-29", "--config", str(tiny_config), "--models-dir", str(models),
    ]  # fmt: skip
    code, text = await cryptorlpm(
        "experiment", "walkforward", "--out", str(tmp_path / "mars"), "--policy", "mars", *args
    )
    assert code == 0, text
    results = json.loads((tmp_path / "mars" / "results.json").read_text())
    assert results["trainings"] == 2 * 2 * 2  # folds x coins x seeds
    assert results["trials"]["total"] == 2
    runs = results["portfolios"]["a"]["runs"]
    assert next(iter(runs)) == "mars" and "trend_filter" in runs
    regime = runs["mars"]["regime"][str(runs["mars"]["median_seed"])]
    assert abs(sum(regime["mean_weights"].values()) - 1.0) < 1e-6
    assert set(regime["mean_weights"]) == {
        "guarded", "careful", "balanced", "bold", "aggressive", "cash", "hold", "trend",
    }  # fmt: skip
    assert (tmp_path / "mars" / "portfolio_a" / "controller.png").stat().st_size > 0
    cards = sorted(models.glob("fold_*/*/*/mars.json"))
    assert len(cards) == 2 * 2 * 2
    for card_path in cards:
        card = json.loads(card_path.read_text())
        fold = int(card_path.parts[-4].split("_")[1])
        assert card["data_ranges"]["bars"]["ms"][1] <= results["folds"][fold]["start_ms"]
        assert card["trading_cost"] == 0.0015

    code, text = await cryptorlpm(
        "experiment", "walkforward", "--out", str(tmp_path / "manager"), "--policy",
        "mars+manager", *args,
    )  # fmt: skip
    assert code == 0, text
    assert "8 reused" in " ".join(text.split())
    managed = json.loads((tmp_path / "manager" / "results.json").read_text())
    regime = managed["portfolios"]["a"]["runs"]["mars+manager"]["regime"]
    assert all(0.0 <= r["mean_gross_exposure"] <= 1.0 for r in regime.values())
    assert len(sorted(models.glob("fold_*/*/*/mars.json"))) == 8  # nothing trained again
    # timing: each variant's own positions; the trend variant is the trend filter's signal; the
    # manager's gross exposure scales what the coins' ensembles decide
    timed = runs["mars"]["timing"]
    median = runs["mars"]["regime"][str(runs["mars"]["median_seed"])]
    assert set(timed["variants"]) == set(median["mean_weights"])
    cash = timed["variants"]["cash"]
    assert cash["mean_weight"] == 0.0 and cash["p_value"] is None  # constant: nothing to test
    assert timed["variants"]["trend"]["timing"] == pytest.approx(
        timed["portfolio"]["trend_filter"]["timing"]
    )
    managed_timing = managed["portfolios"]["a"]["runs"]["mars+manager"]["timing"]["portfolio"]
    assert managed_timing["policy"]["mean_weight"] < timed["portfolio"]["policy"]["mean_weight"]

    # the two runs, paired seed by seed
    code, text = await cryptorlpm(
        "experiment", "compare", str(tmp_path / "mars"), str(tmp_path / "manager"),
        "--out", str(tmp_path / "cmp"),
    )  # fmt: skip
    assert code == 0, text
    compared = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert compared["labels"] == ["mars", "manager"] and compared["same_runtime"]
    pair = compared["portfolios"]["a"]
    seeds = {s["seed"]: s for s in runs["mars"]["seeds"]}
    managed_runs = managed["portfolios"]["a"]["runs"]["mars+manager"]
    managed_seeds = {s["seed"]: s for s in managed_runs["seeds"]}
    assert pair["seeds"] == [1, 2]
    for i, seed in enumerate(pair["seeds"]):
        expected = seeds[seed]["arr"] - managed_seeds[seed]["arr"]
        assert pair["paired"]["arr"][i] == pytest.approx(expected)
    assert "| arr |" in (tmp_path / "cmp" / "comparison.md").read_text()
    code, text = await cryptorlpm("experiment", "compare", str(tmp_path / "mars"), str(models))
    assert code == 2 and "no runs.pkl" in text and "Traceback" not in text
