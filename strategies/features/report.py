"""The per-coin selection report: what was chosen, why, and how much variance the PCA keeps.

:func:`selection_report` turns a fitted :class:`~strategies.features.pipeline.FeatureSpec` into
plain data (it also embeds the spec itself, so the report can rebuild the feature function and
go into a Crypto Module's artifact as is). :func:`write_selection_report` saves it as
``selection.json`` next to ``correlation_heatmap.png`` (candidates x horizons, each cell
annotated with its coefficient, picked cells outlined, chosen metrics starred).
:func:`format_selection_report` renders it as text for ``cryptorlpm features select``.

The plot uses matplotlib's object API with the Agg canvas directly, so importing this module never
changes pyplot's global backend.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bot.timeframes import ms_to_iso
from strategies.features.pipeline import FeatureSpec

REPORT_JSON = "selection.json"
HEATMAP_PNG = "correlation_heatmap.png"


def selection_report(spec: FeatureSpec) -> dict[str, Any]:
    """The selection report of one coin as JSON-ready data.

    Keys: ``coin``, training range, method parameters, ``candidates`` (one entry per pool metric,
    chosen ones first in rank order, each with its coefficient and labelled days per horizon,
    pick count, mean ``|r|``, rank), ``chosen``, ``picks`` per horizon, ``exclusions``,
    ``refinement`` (``k``, explained variance at fit, per-component ratios, transforms),
    ``note`` (why nothing was chosen, else ``None``) and ``spec`` (the full feature spec).
    """
    selection, refiner = spec.selection, spec.refiner
    horizons = selection.horizons_days
    rank = {metric_id: i + 1 for i, metric_id in enumerate(selection.kept)}
    log_flags = dict(zip(refiner.metric_ids, refiner.log_transform, strict=True))
    excluded: dict[str, dict[str, str]] = {}
    for exclusion in selection.exclusions:
        horizon = "all" if exclusion.horizon_days is None else str(exclusion.horizon_days)
        excluded.setdefault(exclusion.metric_id, {})[horizon] = exclusion.reason
    candidates = []
    for i, metric_id in enumerate(selection.pool):
        candidates.append(
            {
                "metric_id": metric_id,
                "rank": rank.get(metric_id),
                "chosen": metric_id in rank,
                "pick_count": selection.pick_counts[i],
                "picked_in_horizons": [
                    p.horizon_days for p in selection.picks if metric_id in p.picked
                ],
                "mean_abs_correlation": selection.mean_abs_correlation(metric_id),
                "correlations": {
                    str(h): _finite_or_none(selection.correlations[i][j])
                    for j, h in enumerate(horizons)
                },
                "labelled_days": {
                    str(h): selection.observations[i][j] for j, h in enumerate(horizons)
                },
                "excluded": excluded.get(metric_id, {}),
                "log_transform": log_flags.get(metric_id),
            }
        )
    candidates.sort(
        key=lambda c: (
            c["rank"] is None,
            c["rank"] or 0,
            -c["pick_count"],
            -c["mean_abs_correlation"],
            c["metric_id"],
        )
    )
    return {
        "coin": spec.coin,
        "train_start": ms_to_iso(selection.train_start_ms),
        "train_end": ms_to_iso(selection.train_end_ms),
        "horizons_days": list(horizons),
        "per_horizon": selection.per_horizon,
        "keep": selection.keep,
        "min_obs": selection.min_obs,
        "pool_size": len(selection.pool),
        "candidates": candidates,
        "chosen": list(selection.kept),
        "picks": selection.to_dict()["picks"],
        "exclusions": selection.to_dict()["exclusions"],
        "refinement": {
            "n_components": refiner.n_components,
            "pca_variance_target": refiner.pca_variance,
            "explained_variance_at_fit": refiner.explained_variance_at_fit
            if refiner.fit_variance_ratios
            else None,
            "variance_ratios": list(refiner.fit_variance_ratios),
            "norm_window_days": refiner.norm_window_days,
            "pca_window_days": refiner.pca_window_days,
            "min_periods": refiner.min_periods,
            "log_transform": log_flags,
        },
        "known_delay_ms": spec.known_delay_ms,
        "note": _note(spec),
        "spec": spec.to_dict(),
    }


def write_selection_report(spec: FeatureSpec, out_dir: Path) -> list[Path]:
    """Write ``selection.json`` and ``correlation_heatmap.png`` into ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = selection_report(spec)
    json_path = out_dir / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    png_path = out_dir / HEATMAP_PNG
    plot_correlation_heatmap(report, png_path)
    return [json_path, png_path]


def plot_correlation_heatmap(report: dict[str, Any], path: Path) -> Path:
    """Draw the candidates x horizons heatmap of a :func:`selection_report` to ``path`` (PNG)."""
    candidates = report["candidates"]
    horizons = [str(h) for h in report["horizons_days"]]
    picked = {
        (metric_id, str(p["horizon_days"]))
        for p in report["picks"]
        for metric_id in (*p["highest"], *p["lowest"])
    }
    n = len(candidates)
    figure = Figure(figsize=(2.2 + 1.3 * len(horizons) + 3.0, 1.6 + 0.32 * max(n, 3)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    title = f"{report['coin']}: correlation with forward returns, {report['train_start'][:10]}"
    title += f" .. {report['train_end'][:10]}"
    if n == 0:
        axes.set_axis_off()
        axes.text(0.5, 0.5, report["note"] or "no candidates", ha="center", va="center", wrap=True)
        axes.set_title(title, fontsize=10)
        figure.savefig(path, dpi=110)
        return path
    grid = np.array(
        [[_nan_if_none(c["correlations"][h]) for h in horizons] for c in candidates], dtype=float
    )
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
    image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto")
    for row, candidate in enumerate(candidates):
        for col, horizon in enumerate(horizons):
            value = grid[row, col]
            reason = candidate["excluded"].get(horizon) or candidate["excluded"].get("all", "")
            text = _short_reason(reason) if math.isnan(value) else f"{value:+.2f}"
            colour = "white" if not math.isnan(value) and abs(value) > 0.6 else "black"
            axes.text(col, row, text, ha="center", va="center", fontsize=7, color=colour)
            if (candidate["metric_id"], horizon) in picked:
                axes.add_patch(
                    Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, lw=1.6, ec="black")
                )
    axes.set_xticks(range(len(horizons)), [f"{h} d" for h in horizons])
    labels = [
        f"#{c['rank']} {c['metric_id']}"
        if c["chosen"]
        else c["metric_id"] + (" (stale)" if "all" in c["excluded"] else "")
        for c in candidates
    ]
    axes.set_yticks(range(n), labels, fontsize=7)
    for label, candidate in zip(axes.get_yticklabels(), candidates, strict=True):
        if candidate["chosen"]:
            label.set_fontweight("bold")
    refinement = report["refinement"]
    explained = refinement["explained_variance_at_fit"]
    subtitle = f"k = {refinement['n_components']} components"
    if explained is not None:
        subtitle += f", {explained:.0%} of training variance"
    legend = "boxed = picked, bold/# = chosen; few = < min_obs days, const = no variance"
    axes.set_title(f"{title}\n{subtitle}\n{legend}", fontsize=9)
    figure.colorbar(image, ax=axes, label="Pearson r", shrink=0.8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def format_selection_report(report: dict[str, Any]) -> str:
    """A plain-text rendering of a :func:`selection_report` for the terminal."""
    horizons = [str(h) for h in report["horizons_days"]]
    refinement = report["refinement"]
    lines = [
        f"{report['coin']}: training {report['train_start']} .. {report['train_end']}, "
        f"pool {report['pool_size']} candidates, {len(report['chosen'])} chosen",
    ]
    if report["note"]:
        lines.append(f"note: {report['note']}")
    header = f"{'rank':>4}  {'metric':<48}" + "".join(f"{h + 'd':>8}" for h in horizons)
    lines += ["", header + f"{'picks':>7}{'log':>5}"]
    for c in report["candidates"]:
        rank = str(c["rank"]) if c["chosen"] else ""
        cells = "".join(_cell(c["correlations"][h]) for h in horizons)
        log = {True: "yes", False: "no", None: ""}[c["log_transform"]]
        lines.append(f"{rank:>4}  {c['metric_id']:<48}{cells}{c['pick_count']:>7}{log:>5}")
    kinds: dict[str, set[str]] = {}
    for exclusion in report["exclusions"]:
        kind = _short_reason(exclusion["reason"])
        kinds.setdefault(kind, set()).add(exclusion["metric_id"])
    if kinds:
        names = {"few": "too few labelled days", "const": "constant", "stale": "stale"}
        summary = ", ".join(f"{len(ids)} {names.get(k, k)}" for k, ids in sorted(kinds.items()))
        lines += ["", f"excluded (candidates, some at one horizon only): {summary}"]
    explained = refinement["explained_variance_at_fit"]
    lines.append("")
    lines.append(
        f"PCA: k = {refinement['n_components']} (target {refinement['pca_variance_target']:.0%})"
        + ("" if explained is None else f", explaining {explained:.1%} on the training window")
    )
    return "\n".join(lines)


def _note(spec: FeatureSpec) -> str | None:
    reason = spec.selection.empty_reason
    if reason is not None:
        return f"no features: {reason}"
    if spec.width == 0:
        return "no features: the chosen metrics have no variance on the training window"
    return None


def _short_reason(reason: str) -> str:
    if reason.startswith("only"):
        return "few"
    if reason.startswith("constant"):
        return "const"
    if reason.startswith("stale"):
        return "stale"
    return "n/a"


def _cell(value: float | None) -> str:
    return f"{'n/a':>8}" if value is None else f"{value:>+8.3f}"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
