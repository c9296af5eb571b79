"""The report of one backtest: a folder with metrics, trades, weights, plots and a summary page.

:func:`write_report` writes, for a strategy and its baselines (all over the same period):

* ``metrics.json``: every run's :func:`~backtest.metrics.compute_metrics`, strategy first, plus
  the title, period, timeframe and quote (undefined ratios are ``null``; :func:`read_metrics`
  turns them back into ``NaN``);
* ``equity.csv``: every run's equity curve, aligned on the close time;
* ``trades.csv`` and ``weights.csv``: the strategy's fills and actual weights over time;
* ``rejections.csv`` / ``refusals.csv``: broker rejections and risk-gate refusals of every run
  (column ``run``), only when there is at least one;
* ``cumulative_returns.png``, ``drawdown.png``, ``weights.png`` (see :mod:`backtest.plots`);
* ``summary.md`` and ``summary.html``: one page with the title, period, the metrics table (best
  value per column in bold), the plots and the notes. The HTML page embeds the plots, so it can be
  moved or mailed on its own.

:func:`metrics_table` and :func:`format_metrics_table` give the paper's Table-2-style comparison
for the command line. Every CSV has the close time twice: ``ts`` (UTC epoch ms) and ``time``
(ISO 8601, UTC).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backtest.metrics import INTEGER_METRICS, METRIC_KEYS, compute_metrics
from backtest.plots import (
    plot_attributions,
    plot_cumulative_returns,
    plot_drawdowns,
    plot_weights,
)
from backtest.result import RunResult
from bot.timeframes import ms_to_iso

METRIC_LABELS = {
    "arr": "ARR",
    "drr": "DRR",
    "sortino": "Sortino (SR)",
    "sharpe": "Sharpe",
    "volatility": "Volatility",
    "mdd": "MDD",
    "calmar": "Calmar",
    "cagr": "CAGR",
    "turnover": "Turnover",
    "annual_turnover": "Turnover/yr",
    "fees": "Fees",
    "trades": "Trades",
    "final_equity": "Final equity",
    "days": "Days",
}
"""Column headers of the metrics table."""

HIGHER_IS_BETTER = frozenset({"arr", "drr", "sortino", "sharpe", "calmar", "cagr", "final_equity"})
LOWER_IS_BETTER = frozenset({"volatility", "mdd"})
"""Columns whose best value is highlighted; turnover, fees, trades and days are not ranked."""

_FORMATS = {
    "arr": "{:+.2%}",
    "drr": "{:+.3%}",
    "volatility": "{:.2%}",
    "mdd": "{:.2%}",
    "cagr": "{:+.2%}",
    "fees": "{:,.2f}",
    "final_equity": "{:,.2f}",
    "trades": "{:d}",
    "days": "{:d}",
}
_EXPLAINED = (
    "Integrated-gradient attributions of each module's chosen action (its margin over the "
    "other action) to its inputs, at evenly spaced decisions: price channels, the on-chain "
    "metrics behind the DRU's components (through their loadings) and the EAM's signal. "
    "Positive: pushed towards the action taken. See explanations.csv."
)
_PLOTS = (
    ("Cumulative return", "cumulative_returns.png"),
    ("Drawdown", "drawdown.png"),
    ("Strategy weights", "weights.png"),
)


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put each file (``None``: not written, nothing to report)."""

    out_dir: Path
    metrics_json: Path
    equity_csv: Path
    trades_csv: Path
    weights_csv: Path
    rejections_csv: Path | None
    refusals_csv: Path | None
    audit_csv: Path | None
    trims_csv: Path | None
    cumulative_returns_png: Path
    drawdown_png: Path
    weights_png: Path
    summary_md: Path
    summary_html: Path
    explanations_csv: Path | None = None
    attribution_pngs: tuple[Path, ...] = ()
    """``attribution_<coin>.png``: what drove each module's decisions (a vote's run)."""

    def files(self) -> list[Path]:
        """Every file written, in a stable order."""
        paths: list[Path | None] = []
        for name in self.__dataclass_fields__:
            if name != "out_dir":
                value = getattr(self, name)
                paths.extend(value if isinstance(value, tuple) else (value,))
        return [p for p in paths if p is not None]


def write_report(
    out_dir: Path,
    strategy: RunResult,
    baselines: Sequence[RunResult],
    *,
    title: str,
    notes: Sequence[str] = (),
) -> ReportPaths:
    """Write the report of ``strategy`` against ``baselines`` into ``out_dir`` (created if needed).

    Run names must be unique. Existing report files in ``out_dir`` are overwritten; a stale
    ``rejections.csv`` / ``refusals.csv`` is removed when this run has none.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [strategy, *baselines]
    table = metrics_table(runs)
    start_ms, end_ms = _period(runs)
    header = {
        "title": title,
        "strategy": strategy.name,
        "baselines": [run.name for run in baselines],
        "timeframe": strategy.timeframe,
        "quote": strategy.quote,
        "initial_cash": strategy.initial_cash,
        "start": ms_to_iso(start_ms) if start_ms is not None else None,
        "end": ms_to_iso(end_ms) if end_ms is not None else None,
    }
    document = {**header, "runs": {name: _json_ready(row) for name, row in table.iterrows()}}
    metrics_json = out / "metrics.json"
    metrics_json.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")

    equity = pd.concat({run.name: run.equity for run in runs}, axis=1).sort_index()
    equity_csv = _write_csv(equity.rename_axis("ts").reset_index(), out / "equity.csv")
    trades_csv = _write_csv(strategy.trades, out / "trades.csv")
    weights_csv = _write_csv(strategy.weights.rename_axis("ts").reset_index(), out / "weights.csv")
    rejections_csv = _write_per_run(runs, "rejections", out / "rejections.csv")
    refusals_csv = _write_per_run(runs, "refusals", out / "refusals.csv")
    audit_csv = _write_per_run(runs, "audit", out / "audit.csv")
    trims_csv = _write_per_run(runs, "trims", out / "trims.csv")
    explained = strategy.explanations
    explanations_csv = out / "explanations.csv"
    explanations_csv.unlink(missing_ok=True)
    attribution_pngs: list[Path] = []
    for stale in out.glob("attribution_*.png"):
        stale.unlink()
    if len(explained):
        _write_csv(explained, explanations_csv)
        for coin, rows in explained.groupby("coin", sort=False):
            attribution_pngs.append(
                plot_attributions(
                    rows,
                    out / f"attribution_{coin}.png",
                    title=f"{strategy.name}: what drove {coin}'s module",
                )
            )

    paths = ReportPaths(
        out_dir=out,
        metrics_json=metrics_json,
        equity_csv=equity_csv,
        trades_csv=trades_csv,
        weights_csv=weights_csv,
        rejections_csv=rejections_csv,
        refusals_csv=refusals_csv,
        audit_csv=audit_csv,
        trims_csv=trims_csv,
        cumulative_returns_png=plot_cumulative_returns(
            strategy, baselines, out / _PLOTS[0][1], title=f"{title}: cumulative return"
        ),
        drawdown_png=plot_drawdowns(
            strategy, baselines, out / _PLOTS[1][1], title=f"{title}: drawdown"
        ),
        weights_png=plot_weights(strategy, out / _PLOTS[2][1], title=f"{strategy.name}: weights"),
        summary_md=out / "summary.md",
        summary_html=out / "summary.html",
        explanations_csv=explanations_csv if len(explained) else None,
        attribution_pngs=tuple(attribution_pngs),
    )
    facts = _facts(header, strategy, len(baselines), table)
    audit = audit_table(strategy)
    paths.summary_md.write_text(_summary_markdown(title, facts, table, notes, paths, audit))
    paths.summary_html.write_text(_summary_html(title, facts, table, notes, paths, audit))
    return paths


def read_metrics(path: Path) -> dict[str, dict[str, float | int]]:
    """The per-run metrics of a ``metrics.json``, in file order (``null`` read back as ``NaN``)."""
    document = json.loads(Path(path).read_text())
    return {
        name: {key: math.nan if value is None else value for key, value in metrics.items()}
        for name, metrics in document["runs"].items()
    }


def metrics_table(runs: Sequence[RunResult]) -> pd.DataFrame:
    """One row of :func:`compute_metrics` per run (index: run name, in order; columns:
    :data:`~backtest.metrics.METRIC_KEYS`). Raises ``ValueError`` on duplicate run names."""
    names = [run.name for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"run names must be unique, repeated: {', '.join(duplicates)}")
    rows = [compute_metrics(run) for run in runs]
    table = pd.DataFrame(rows, index=pd.Index(names, name="run"), columns=list(METRIC_KEYS))
    return table.astype({key: "int64" for key in INTEGER_METRICS})


def format_metrics_table(
    table: pd.DataFrame, *, columns: Sequence[str] | None = None, highlight: bool = True
) -> str:
    """A :func:`metrics_table` as a Markdown table; with ``highlight``, the best value of each
    ranked column (:data:`HIGHER_IS_BETTER`, :data:`LOWER_IS_BETTER`) is in bold."""
    cells, best = _cells(table, columns)
    keys = list(cells.columns)
    lines = [
        "| run | " + " | ".join(METRIC_LABELS.get(k, k) for k in keys) + " |",
        "| :-- | " + " | ".join("--:" for _ in keys) + " |",
    ]
    for name, row in cells.iterrows():
        shown = [f"**{row[k]}**" if highlight and best.at[name, k] else row[k] for k in keys]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _cells(table: pd.DataFrame, columns: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Formatted text of every cell, and which cells hold their column's best value."""
    keys = list(columns) if columns is not None else list(table.columns)
    cells = pd.DataFrame(index=table.index, columns=keys, dtype=object)
    best = pd.DataFrame(False, index=table.index, columns=keys)
    for key in keys:
        values = table[key]
        cells[key] = [_format(key, value) for value in values]
        finite = values[values.notna()]
        if len(finite) >= 2 and (key in HIGHER_IS_BETTER or key in LOWER_IS_BETTER):
            target = finite.max() if key in HIGHER_IS_BETTER else finite.min()
            best[key] = values == target
    return cells, best


def _format(key: str, value: float | int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key in INTEGER_METRICS:
        return f"{int(value):d}"
    return _FORMATS.get(key, "{:.2f}").format(float(value))


def _period(runs: Sequence[RunResult]) -> tuple[int | None, int | None]:
    closes = [int(t) for run in runs if len(run.equity) for t in run.equity.index[[0, -1]]]
    return (min(closes), max(closes)) if closes else (None, None)


def _facts(header: dict, strategy: RunResult, n_baselines: int, table: pd.DataFrame) -> list[str]:
    days = int(table.at[strategy.name, "days"])
    period = f"{header['start']} to {header['end']}" if header["start"] else "no closes recorded"
    return [
        f"Strategy `{strategy.name}` against {n_baselines} baseline(s)",
        f"Period: {period} ({days} days), decisions every {strategy.timeframe}",
        f"Quote: {strategy.quote}, initial cash {strategy.initial_cash:,.2f}",
        f"Strategy: {len(strategy.trades)} fills, {len(strategy.rejections)} broker rejections, "
        f"{len(strategy.refusals)} risk-gate refusals",
    ]


_LEGEND = (
    "Best value per column in bold (highest ARR, DRR, Sortino, Sharpe, Calmar, CAGR and final "
    "equity; lowest volatility and MDD). ARR = final/initial equity - 1; DRR = mean daily return; "
    "Sortino = mean / downside deviation x sqrt(365); Sharpe = mean / std x sqrt(365); volatility "
    "annualised; MDD on every close; Calmar = CAGR / MDD; turnover = traded notional / mean "
    "equity over the run; fees in the quote currency. Definitions: `backtest/metrics.py`."
)


AUDIT_ROWS = 30
"""Rows of the guardrail audit shown in the summary (the CSV has them all)."""


def audit_table(run: RunResult) -> pd.DataFrame:
    """The guardrail audit of ``run`` as shown: close, asset, wanted, allowed, rules (the
    latest :data:`AUDIT_ROWS`)."""
    audit = run.audit.tail(AUDIT_ROWS)
    return pd.DataFrame(
        {
            "close": [ms_to_iso(int(t)) for t in audit["ts"]],
            "asset": audit["asset"].tolist(),
            "wanted": [f"{w:.4f}" for w in audit["wanted"]],
            "allowed": ["-" if pd.isna(a) else f"{a:.4f}" for a in audit["allowed"]],
            "rules": audit["rules"].tolist(),
        }
    )


def _markdown_table(frame: pd.DataFrame) -> str:
    rows = [list(frame.columns), ["---"] * len(frame.columns)]
    rows += [[str(v) for v in row] for row in frame.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _audit_heading(run_audit: pd.DataFrame) -> str:
    return (
        f"Guardrail audit (the last {len(run_audit)} changes; every one in `audit.csv`, orders "
        "trimmed by the market's filters in `trims.csv`)"
    )


def _summary_markdown(
    title: str,
    facts: list[str],
    table: pd.DataFrame,
    notes: Sequence[str],
    paths: ReportPaths,
    audit: pd.DataFrame,
) -> str:
    lines = [f"# {title}", "", *(f"- {fact}" for fact in facts), "", "## Metrics", ""]
    lines += [format_metrics_table(table), "", _LEGEND, ""]
    for heading, name in _PLOTS:
        lines += [f"## {heading}", "", f"![{heading}]({name})", ""]
    if paths.attribution_pngs:
        lines += ["## What drove the decisions", "", _EXPLAINED, ""]
        lines += [f"![{p.stem}]({p.name})" for p in paths.attribution_pngs] + [""]
    if len(audit):
        lines += [f"## {_audit_heading(audit)}", "", _markdown_table(audit), ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    lines += ["## Files", "", ", ".join(f"`{p.name}`" for p in paths.files()), ""]
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:0.9em}th,td{padding:4px 8px;border-bottom:1px solid "
    "#ddd;text-align:right}th:first-child,td:first-child{text-align:left}"
    "td.best{font-weight:bold;background:#e6f4ea}tr.strategy td:first-child{font-weight:bold}"
    "img{max-width:100%}p.legend{font-size:0.85em;color:#555}"
)


def _summary_html(
    title: str,
    facts: list[str],
    table: pd.DataFrame,
    notes: Sequence[str],
    paths: ReportPaths,
    audit: pd.DataFrame,
) -> str:
    esc = html.escape
    cells, best = _cells(table, None)
    head = "".join(f"<th>{esc(METRIC_LABELS.get(k, k))}</th>" for k in cells.columns)
    rows = []
    for i, (name, row) in enumerate(cells.iterrows()):
        tds = "".join(
            f'<td class="best">{esc(row[k])}</td>'
            if best.at[name, k]
            else f"<td>{esc(row[k])}</td>"
            for k in cells.columns
        )
        css = ' class="strategy"' if i == 0 else ""
        rows.append(f"<tr{css}><td>{esc(str(name))}</td>{tds}</tr>")
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<ul>" + "".join(f"<li>{_inline_html(fact)}</li>" for fact in facts) + "</ul>",
        "<h2>Metrics</h2>",
        f"<table><thead><tr><th>run</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
        f'<p class="legend">{_inline_html(_LEGEND)}</p>',
    ]
    for heading, name in _PLOTS:
        data = base64.b64encode((paths.out_dir / name).read_bytes()).decode("ascii")
        parts += [
            f"<h2>{esc(heading)}</h2>",
            f'<img alt="{esc(heading)}" src="data:image/png;base64,{data}">',
        ]
    if paths.attribution_pngs:
        parts += ["<h2>What drove the decisions</h2>", f'<p class="legend">{esc(_EXPLAINED)}</p>']
        for png in paths.attribution_pngs:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<img alt="{esc(png.stem)}" src="data:image/png;base64,{data}">')
    if len(audit):
        head = "".join(f"<th>{esc(c)}</th>" for c in audit.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
            for row in audit.itertuples(index=False)
        )
        parts += [
            f"<h2>{_inline_html(_audit_heading(audit))}</h2>",
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
        ]
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escaped ``text`` with Markdown code spans turned into ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _json_ready(row: pd.Series) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {}
    for key, value in row.items():
        if key in INTEGER_METRICS:
            out[str(key)] = int(value)
        else:
            out[str(key)] = None if math.isnan(float(value)) else float(value)
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` with an ISO ``time`` column after ``ts`` (if it has one), to ``path``."""
    if "ts" in frame.columns:
        frame = frame.copy()
        times = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)
        frame.insert(
            frame.columns.get_loc("ts") + 1, "time", times.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
    frame.to_csv(path, index=False)
    return path


def _write_per_run(runs: Sequence[RunResult], attribute: str, path: Path) -> Path | None:
    frames = [getattr(run, attribute).assign(run=run.name) for run in runs]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        path.unlink(missing_ok=True)
        return None
    merged = pd.concat(frames, ignore_index=True)
    return _write_csv(merged[["run", *[c for c in merged.columns if c != "run"]]], path)
