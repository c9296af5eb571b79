"""The plots of a backtest report: cumulative returns, drawdowns and the strategy's weights.

Each function draws one PNG from :class:`~backtest.result.RunResult` objects. The x axis shows
UTC dates (the decision close times). The strategy is drawn bold and black, every baseline as a
thin coloured line, like the paper's Figures 6-8.

The plots use matplotlib's object API with the Agg canvas directly, so importing this module never
changes pyplot's global backend or state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from backtest.metrics import drawdowns
from backtest.result import RunResult

DPI = 120
STRATEGY_COLOUR = "black"
QUOTE_COLOUR = "0.85"


def cumulative_returns(equity: pd.Series) -> pd.Series:
    """Return since the first close at every close: ``E_t / E_0 - 1``."""
    if not len(equity):
        return equity.astype(float)
    return (equity / equity.iloc[0] - 1.0).rename("cumulative_return")


def plot_cumulative_returns(
    strategy: RunResult, baselines: Sequence[RunResult], path: Path, *, title: str = ""
) -> Path:
    """Cumulative return of the strategy (bold) and of every baseline over time, to ``path``."""
    figure, axes = _figure()
    axes.axhline(0.0, color="0.5", lw=0.8)
    for run, style in _styled(strategy, baselines):
        curve = cumulative_returns(run.equity)
        if len(curve):
            label = f"{run.name} ({curve.iloc[-1]:+.1%})"
            axes.plot(_times(curve.index), curve.to_numpy(), label=label, **style)
    _finish(axes, title or "Cumulative return", "cumulative return")
    return _save(figure, path)


def plot_drawdowns(
    strategy: RunResult, baselines: Sequence[RunResult], path: Path, *, title: str = ""
) -> Path:
    """Drawdown below the running peak of every run (strategy shaded, its MDD marked)."""
    figure, axes = _figure()
    for run, style in _styled(strategy, baselines):
        if not len(run.equity):
            continue
        depth = -drawdowns(run.equity)
        times = _times(depth.index)
        worst = float(depth.min())
        axes.plot(times, depth.to_numpy(), label=f"{run.name} (MDD {-worst:.1%})", **style)
        if run is strategy:
            axes.fill_between(times, depth.to_numpy(), 0.0, color="tab:red", alpha=0.15, lw=0)
            at = int(np.argmin(depth.to_numpy()))
            axes.plot(times[at], worst, "v", color="tab:red", ms=8, zorder=11)
    axes.axhline(0.0, color="0.5", lw=0.8)
    _finish(axes, title or "Drawdown", "drawdown from running peak")
    return _save(figure, path)


def plot_weights(strategy: RunResult, path: Path, *, title: str = "") -> Path:
    """Stacked steps of the strategy's actual weights at every close (the quote currency on top)."""
    figure, axes = _figure()
    weights = strategy.weights
    if weights.empty:
        axes.text(0.5, 0.5, "no weights recorded", ha="center", va="center")
        axes.set_axis_off()
        axes.set_title(title or f"{strategy.name}: weights")
        return _save(figure, path)
    coins = [c for c in weights.columns if c != strategy.quote]
    coins.sort(key=lambda c: -float(weights[c].mean()))
    order = [*coins, *([strategy.quote] if strategy.quote in weights.columns else [])]
    shares = weights[order].clip(lower=0.0).to_numpy(dtype=float).T
    palette = colormaps["tab20" if len(coins) > 10 else "tab10"].colors
    colours = [palette[i % len(palette)] for i in range(len(coins))]
    if strategy.quote in weights.columns:
        colours.append(QUOTE_COLOUR)
    times, upper = _times(weights.index), np.cumsum(shares, axis=0)
    lower = np.vstack([np.zeros_like(upper[:1]), upper[:-1]])
    for band, (name, colour) in enumerate(zip(order, colours, strict=True)):
        # weights are held from one close to the next: steps, not interpolated ramps
        axes.fill_between(
            times, lower[band], upper[band], step="post", color=colour, lw=0, label=name, zorder=3
        )
    axes.set_ylim(0.0, 1.0)
    axes.margins(x=0)
    audit = strategy.audit
    if len(audit):  # the closes where a guardrail changed what the policy wanted
        when = _times(pd.Index(sorted(set(audit["ts"].astype("int64")))))
        axes.plot(
            when,
            np.full(len(when), 0.985),
            linestyle="none",
            marker="v",
            markersize=4,
            color="#c0392b",
            label="guardrail changed the target",
            zorder=5,
        )
    _finish(axes, title or f"{strategy.name}: weights", "share of equity", reverse_legend=True)
    return _save(figure, path)


def _styled(strategy: RunResult, baselines: Sequence[RunResult]):
    """Each run with its line style: the strategy bold black on top, baselines thin colours."""
    palette = colormaps["tab20" if len(baselines) > 10 else "tab10"].colors
    yield strategy, {"color": STRATEGY_COLOUR, "lw": 2.4, "zorder": 10}
    for i, run in enumerate(baselines):
        yield run, {"color": palette[i % len(palette)], "lw": 1.1, "alpha": 0.9, "zorder": 5}


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(11.0, 5.2))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _finish(axes: Axes, title: str, ylabel: str, *, reverse_legend: bool = False) -> None:
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("date (UTC)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, color="0.9", lw=0.6)
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        if reverse_legend:  # stacked areas: list the top band first, as drawn
            handles, labels = handles[::-1], labels[::-1]
        axes.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
        )


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def _times(index: pd.Index) -> np.ndarray:
    """Close times (int epoch ms) as naive UTC ``datetime64`` for the x axis."""
    return np.asarray(index, dtype="int64").astype("datetime64[ms]")


def plot_fold_bars(
    folds: Sequence[str], values: dict[str, Sequence[float]], path: Path, *, title: str = ""
) -> Path:
    """Grouped bars: one group per fold (``folds``: labels), one bar per run (``values``: run
    name -> one value per fold, e.g. each fold's ARR); the first run is drawn in the strategy's
    colour."""
    figure = Figure(figsize=(11.0, 5.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = colormaps["tab20" if len(values) > 10 else "tab10"].colors
    width = 0.8 / max(len(values), 1)
    x = np.arange(len(folds))
    for i, (name, series) in enumerate(values.items()):
        colour = STRATEGY_COLOUR if i == 0 else palette[(i - 1) % len(palette)]
        axes.bar(x + (i - (len(values) - 1) / 2) * width, series, width, label=name, color=colour)
    axes.axhline(0.0, color="0.4", lw=0.8)
    axes.set_xticks(x, list(folds), fontsize=8)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("return over the fold")
    axes.set_title(title)
    axes.grid(True, axis="y", color="0.9", lw=0.6)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(figure, path)


def plot_attributions(
    explanations: pd.DataFrame, path: Path, *, title: str = "", top: int = 6
) -> Path:
    """What drove one module's decisions over time: the attribution of each of its ``top``
    most influential inputs (largest mean ``|attribution|``) at every explained decision,
    smoothed over 5 decisions, with the decision drawn as a strip underneath (dark: all coin).

    ``explanations``: ``ts, action, input, attribution`` rows of one coin
    (:func:`strategies.explain.attribution_frame`)."""
    figure = Figure(figsize=(11.0, 5.6))
    FigureCanvasAgg(figure)
    axes, strip = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [6, 1], "hspace": 0.05}
    )
    table = explanations.pivot_table(index="ts", columns="input", values="attribution")
    ranked = table.abs().mean().sort_values(ascending=False).index[:top]
    times = _times(table.index)
    colours = colormaps["tab10"]
    axes.axhline(0.0, color="0.5", lw=0.8)
    for i, name in enumerate(ranked):
        series = table[name].rolling(5, min_periods=1, center=True).mean()
        axes.plot(times, series.to_numpy(), lw=1.4, color=colours(i % 10), label=name)
    actions = explanations.drop_duplicates("ts").set_index("ts")["action"].reindex(table.index)
    holding = np.isin(actions.to_numpy(), ("all_coin", "buy"))[None, :].astype(float)
    if len(times):
        edges = np.r_[times, times[-1] + (times[-1] - times[0]) / max(len(times) - 1, 1)]
        strip.pcolormesh(edges, [0, 1], holding, cmap="Greys", vmin=0.0, vmax=1.5)
    strip.set_yticks([])
    strip.set_ylabel("in coin", rotation=0, ha="right", va="center")
    locator = AutoDateLocator()
    strip.xaxis.set_major_locator(locator)
    strip.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    strip.set_xlabel("date (UTC)")
    axes.set_ylabel("attribution to the chosen action's margin")
    axes.set_title(title or "What drove the decisions")
    axes.grid(True, color="0.9", lw=0.6)
    if len(ranked):
        axes.legend(loc="upper left", fontsize=8, ncol=min(3, len(ranked)), frameon=False)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_drivers(inputs: Sequence[tuple[str, float]], path: Path, *, title: str = "") -> Path:
    """One decision's inputs as horizontal bars (largest first; green for, red against)."""
    figure, axes = _figure()
    names = [name for name, _ in inputs][::-1]
    values = np.array([value for _, value in inputs][::-1], dtype=float)
    colours = np.where(values >= 0, "tab:green", "tab:red")
    axes.barh(names, values, color=colours)
    axes.axvline(0.0, color="0.4", lw=0.8)
    axes.set_xlabel("attribution to the chosen action's margin (+ for, - against)")
    axes.set_title(title or "What drove the decision")
    axes.grid(True, axis="x", color="0.9", lw=0.6)
    return _save(figure, path)


def plot_timing(rows: Sequence[tuple[str, dict]], path: Path, *, title: str = "") -> Path:
    """Timing per year (:mod:`backtest.timing`), one row per ``(label, attribution)``: the
    observed timing as a dot, the middle 90% of what circular shifts of the same positions give
    as a grey bar. A dot inside its bar is timing that chance alone gives."""
    figure = Figure(figsize=(11.0, 1.2 + 0.34 * max(len(rows), 1)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    y = np.arange(len(rows))[::-1]
    for yi, (_, row) in zip(y, rows, strict=True):
        low, high = row.get("null_low"), row.get("null_high")
        band = low is not None and high is not None and np.isfinite(low) and np.isfinite(high)
        if band:
            axes.plot([low, high], [yi, yi], color="0.75", lw=7, solid_capstyle="butt", zorder=1)
        timing = row.get("timing")
        if timing is not None and np.isfinite(timing):
            outside = band and not low <= timing <= high
            colour = "tab:red" if outside else STRATEGY_COLOUR
            axes.plot([timing], [yi], "o", color=colour, ms=6, zorder=2)
    axes.axvline(0.0, color="0.4", lw=0.8)
    axes.set_yticks(y, [label for label, _ in rows], fontsize=8)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("timing per year, before costs (red: outside the middle 90% of the shifts)")
    axes.set_title(title)
    axes.grid(True, axis="x", color="0.9", lw=0.6)
    return _save(figure, path)
