"""The report folder: files, metrics.json round trip, valid plots, summary pages and tables."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backtest.metrics import METRIC_KEYS, compute_metrics
from backtest.report import (
    ReportPaths,
    format_metrics_table,
    metrics_table,
    read_metrics,
    write_report,
)
from backtest.result import (
    AUDIT_COLUMNS,
    EXPLANATION_COLUMNS,
    REFUSAL_COLUMNS,
    REJECTION_COLUMNS,
    TRADE_COLUMNS,
    RunResult,
)
from bot.timeframes import HOUR_MS, to_ms

START = to_ms("2022-07-01")
CLOSES = START + 6 * HOUR_MS * np.arange(4 * 30 + 1)


def make_run(
    name: str,
    growth: np.ndarray,
    *,
    coins: tuple[str, ...] = ("BTC", "ETH"),
    trades: int = 0,
    rejected: bool = False,
    refused: bool = False,
) -> RunResult:
    """A run over :data:`CLOSES` with equity ``10_000 * growth`` and random weights."""
    index = pd.Index(CLOSES, name="ts")
    rng = np.random.default_rng(len(name))
    shares = rng.dirichlet(np.ones(len(coins) + 1), size=len(index))
    weights = pd.DataFrame(shares, index=index, columns=["USDT", *coins])
    fills = [
        (
            int(CLOSES[i]),
            f"rlpm-{i}",
            "BTC/USDT",
            "buy" if i % 2 else "sell",
            0.1,
            20_000.0,
            2.0,
            "USDT",
            2_000.0,
        )
        for i in range(trades)
    ]
    rejections = [(int(CLOSES[-1]), "rlpm-x", "ETH/USDT", "sell", 1.0, "end of data")]
    refusals = [(int(CLOSES[3]), "max_weight", "BTC", 0.9, 0.5, "capped")]
    return RunResult(
        name=name,
        timeframe="6h",
        quote="USDT",
        initial_cash=10_000.0,
        equity=pd.Series(10_000.0 * growth, index=index, name="equity"),
        weights=weights,
        trades=pd.DataFrame(fills, columns=TRADE_COLUMNS),
        rejections=pd.DataFrame(rejections if rejected else [], columns=REJECTION_COLUMNS),
        refusals=pd.DataFrame(refusals if refused else [], columns=REFUSAL_COLUMNS),
        fees_paid=2.0 * trades,
        audit=pd.DataFrame(
            [(int(CLOSES[3]), "BTC", 0.9, 0.5, "max_weight_per_coin")] if refused else [],
            columns=AUDIT_COLUMNS,
        ),
    )


def walk(seed: int, drift: float) -> np.ndarray:
    steps = np.random.default_rng(seed).normal(drift, 0.02, len(CLOSES) - 1)
    return np.exp(np.r_[0.0, np.cumsum(steps)])


@pytest.fixture
def runs() -> list[RunResult]:
    strategy = make_run("cm_vote", walk(1, 0.003), trades=12, rejected=True, refused=True)
    return [
        strategy,
        make_run("bh_BTC", walk(2, -0.001), trades=1),
        make_run("equal_weight", walk(3, 0.0), trades=40, rejected=True),
        make_run("cash", np.ones(len(CLOSES)), coins=()),  # flat: undefined ratios
    ]


@pytest.fixture
def report(tmp_path: Path, runs: list[RunResult]) -> ReportPaths:
    notes = ["synthetic market, seed 1", "<script>alert(1)</script> is shown as text"]
    return write_report(tmp_path / "report", runs[0], runs[1:], title="Demo run", notes=notes)


def test_every_file_is_written_and_non_empty(report: ReportPaths):
    names = {path.name for path in report.files()}
    assert names == {
        "metrics.json",
        "equity.csv",
        "trades.csv",
        "weights.csv",
        "rejections.csv",
        "refusals.csv",
        "audit.csv",
        "cumulative_returns.png",
        "drawdown.png",
        "weights.png",
        "summary.md",
        "summary.html",
    }
    for path in report.files():
        assert path.parent == report.out_dir and path.stat().st_size > 0, path


def test_metrics_json_round_trips_strategy_first(report: ReportPaths, runs: list[RunResult]):
    text = report.metrics_json.read_text()
    document = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert document["strategy"] == "cm_vote"
    assert document["baselines"] == ["bh_BTC", "equal_weight", "cash"]
    assert document["start"] == "2022-07-01T00:00:00Z" and document["end"] == "2022-07-31T00:00:00Z"
    read = read_metrics(report.metrics_json)
    assert list(read) == [run.name for run in runs]
    for run in runs:
        expected = compute_metrics(run)
        assert list(read[run.name]) == list(METRIC_KEYS)
        for key, value in expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(read[run.name][key]), (run.name, key)
            else:
                assert read[run.name][key] == pytest.approx(value, rel=1e-15), (run.name, key)
    assert document["runs"]["cash"]["sharpe"] is None


def test_plots_are_valid_pngs_of_a_readable_size(report: ReportPaths):
    for path in (report.cumulative_returns_png, report.drawdown_png, report.weights_png):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] >= 800 and image.size[1] >= 400


def test_csvs_hold_the_strategy_and_every_runs_equity(report: ReportPaths, runs):
    equity = pd.read_csv(report.equity_csv)
    assert list(equity.columns) == ["ts", "time", *(run.name for run in runs)]
    assert equity["ts"].tolist() == CLOSES.tolist()
    assert equity["time"].iloc[0] == "2022-07-01T00:00:00Z"
    np.testing.assert_allclose(equity["cm_vote"], runs[0].equity.to_numpy())
    trades = pd.read_csv(report.trades_csv)
    assert list(trades.columns) == ["ts", "time", *TRADE_COLUMNS[1:]] and len(trades) == 12
    weights = pd.read_csv(report.weights_csv)
    assert list(weights.columns) == ["ts", "time", "USDT", "BTC", "ETH"]
    assert len(weights) == len(CLOSES)
    rejections = pd.read_csv(report.rejections_csv)
    assert rejections["run"].tolist() == ["cm_vote", "equal_weight"]
    assert pd.read_csv(report.refusals_csv)["rule"].tolist() == ["max_weight"]


def test_rejections_and_refusals_are_left_out_when_there_are_none(tmp_path: Path, runs):
    out = tmp_path / "report"
    out.mkdir()
    (out / "refusals.csv").write_text("stale\n")
    quiet = [make_run("cm_vote", walk(1, 0.0)), make_run("bh_BTC", walk(2, 0.0))]
    paths = write_report(out, quiet[0], quiet[1:], title="Quiet")
    assert paths.rejections_csv is None and paths.refusals_csv is None
    assert not (out / "rejections.csv").exists() and not (out / "refusals.csv").exists()


def test_markdown_summary_has_every_run_the_plots_and_the_notes(report: ReportPaths, runs):
    text = report.summary_md.read_text()
    assert text.startswith("# Demo run\n")
    assert "2022-07-01T00:00:00Z to 2022-07-31T00:00:00Z (30 days)" in text
    for run in runs:
        assert f"| {run.name} |" in text
    for name in ("cumulative_returns.png", "drawdown.png", "weights.png"):
        assert f"]({name})" in text
    assert "- synthetic market, seed 1" in text


def test_html_summary_embeds_the_plots_and_escapes_text(report: ReportPaths, runs):
    page = report.summary_html.read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "<script>" not in page and "&lt;script&gt;" in page
    for run in runs:
        assert f"<td>{run.name}</td>" in page
    assert 'class="best"' in page


def test_table_highlights_the_best_value_of_ranked_columns(runs):
    table = metrics_table(runs)
    text = format_metrics_table(table)
    best_arr = table["arr"].idxmax()
    lowest_mdd = table["mdd"].idxmin()
    row = {line.split(" | ")[0][2:]: line for line in text.splitlines()[2:]}
    assert f"**{table.at[best_arr, 'arr']:+.2%}**" in row[best_arr]
    assert f"**{table.at[lowest_mdd, 'mdd']:.2%}**" in row[lowest_mdd]
    assert "n/a" in row["cash"]  # undefined Sharpe of a flat run
    assert "**" not in format_metrics_table(table, highlight=False)


def test_table_keeps_run_order_and_can_show_chosen_columns(runs):
    table = metrics_table(runs)
    assert list(table.index) == [run.name for run in runs]
    assert list(table.columns) == list(METRIC_KEYS)
    assert table["trades"].tolist() == [12, 1, 40, 0]
    text = format_metrics_table(table, columns=["arr", "drr", "sortino"])
    lines = text.splitlines()
    assert lines[0] == "| run | ARR | DRR | Sortino (SR) |"
    assert len(lines) == 2 + len(runs)


def test_duplicate_run_names_are_refused(runs):
    with pytest.raises(ValueError, match="bh_BTC"):
        metrics_table([runs[1], runs[1]])


def test_importing_the_report_leaves_pyplot_alone():
    code = "import sys, backtest.report; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_the_guardrail_audit_is_a_table_a_csv_and_markers_on_the_weights(report: ReportPaths):
    assert report.audit_csv is not None and "max_weight_per_coin" in report.audit_csv.read_text()
    text = report.summary_md.read_text()
    assert "## Guardrail audit" in text
    assert "| 2022-07-01T18:00:00Z | BTC | 0.9000 | 0.5000 | max_weight_per_coin |" in text
    assert "max_weight_per_coin</td>" in report.summary_html.read_text()


def test_a_vote_s_explanations_give_an_attribution_plot_per_coin(tmp_path: Path, runs) -> None:
    rng = np.random.default_rng(4)
    names = ["close", "volume", "BTC:active_addresses", "EAM signal"]
    rows = [
        (int(ts), coin, "all_coin" if rng.random() > 0.5 else "all_cash", name, rng.normal())
        for ts in CLOSES[::4]
        for coin in ("BTC", "ETH")
        for name in names
    ]
    explained = pd.DataFrame(rows, columns=EXPLANATION_COLUMNS)
    strategy = dataclasses.replace(runs[0], explanations=explained)
    paths = write_report(tmp_path / "r", strategy, runs[1:], title="Vote")
    assert [p.name for p in paths.attribution_pngs] == [
        "attribution_BTC.png",
        "attribution_ETH.png",
    ]
    for png in paths.attribution_pngs:
        assert png in paths.files() and Image.open(png).size[0] > 600
    written = pd.read_csv(paths.explanations_csv)
    assert len(written) == len(explained) and set(EXPLANATION_COLUMNS) <= set(written.columns)
    assert "attribution_ETH.png" in paths.summary_md.read_text()
    assert paths.summary_html.read_text().count("data:image/png") == 3 + 2
    # a run without explanations (a baseline's policy) leaves none behind
    again = write_report(tmp_path / "r", runs[0], runs[1:], title="Vote")
    assert again.attribution_pngs == () and again.explanations_csv is None
    assert not list((tmp_path / "r").glob("attribution_*.png"))
    assert not (tmp_path / "r" / "explanations.csv").exists()
