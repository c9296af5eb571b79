"""What a MARS policy's controller and manager did: tables and a plot beside the equity.

From the :class:`~bot.events.VariantWeights` and :class:`~bot.events.GrossExposure` notes a run
recorded (:class:`backtest.pipeline.RecordingPolicy`):

* :func:`regime_frames` - the controller's weights per variant (mean over coins), each coin's
  exposure and the manager's gross exposure, one row per decision;
* :func:`regime_summary` - the mean weight of each variant, of the conservative ones, and how
  both moved in the portfolio's drawdowns (is the controller more careful when it is losing?);
* :func:`plot_controller` - equity, the controller's weights (stacked) and the exposures over
  time, sharing one date axis (``controller.png`` in each walk-forward portfolio folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from backtest.metrics import drawdowns
from backtest.plots import DPI, _times, cumulative_returns
from backtest.result import RunResult
from bot.events import GrossExposure, VariantWeights


def regime_frames(
    notes: Sequence[VariantWeights | GrossExposure],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """``(weights, exposure, gross)``: the mean controller weight of each variant over the
    coins (index: decision close, columns: variants), each coin's exposure (columns: coins)
    and the gross exposure (1 where no manager noted one)."""
    rows = [n for n in notes if isinstance(n, VariantWeights)]
    gross = pd.Series(
        {n.ts: n.exposure for n in notes if isinstance(n, GrossExposure)}, dtype=float
    ).sort_index()
    if not rows:
        return pd.DataFrame(), pd.DataFrame(), gross
    long = pd.DataFrame([{"ts": n.ts, "coin": n.coin, **dict(n.weights)} for n in rows]).set_index(
        ["ts", "coin"]
    )
    weights = long.groupby(level="ts").mean().sort_index()
    exposure = (
        pd.DataFrame([{"ts": n.ts, "coin": n.coin, "exposure": n.exposure} for n in rows])
        .pivot_table(index="ts", columns="coin", values="exposure")
        .sort_index()
    )
    return weights, exposure, gross


def regime_summary(
    notes: Sequence[VariantWeights | GrossExposure],
    run: RunResult,
    conservative: Sequence[str],
    *,
    deep: float = 0.10,
) -> dict[str, Any]:
    """Mean weight per variant, mean conservative weight overall and when the run was more than
    ``deep`` below its peak (and when not), mean coin exposure and gross exposure."""
    weights, exposure, gross = regime_frames(notes)
    if weights.empty:
        return {}
    conservative_weight = weights[[c for c in conservative if c in weights]].sum(axis=1)
    depth = drawdowns(run.equity).reindex(weights.index).ffill().fillna(0.0)
    down = depth > deep
    return {
        "mean_weights": {k: float(v) for k, v in weights.mean().items()},
        "conservative": list(conservative),
        "conservative_weight": float(conservative_weight.mean()),
        "conservative_weight_in_drawdown": _mean(conservative_weight[down]),
        "conservative_weight_otherwise": _mean(conservative_weight[~down]),
        "drawdown_threshold": deep,
        "mean_coin_exposure": float(exposure.mean().mean()),
        "mean_gross_exposure": _mean(gross),
    }


def _mean(series: pd.Series) -> float | None:
    return float(series.mean()) if len(series) else None


def plot_controller(
    run: RunResult,
    notes: Sequence[VariantWeights | GrossExposure],
    path: Path,
    *,
    title: str = "",
) -> Path | None:
    """Three panels on one date axis: the run's cumulative return, the controller's weights
    (mean over coins, stacked) and the mean coin exposure with the manager's gross exposure.
    None (nothing drawn) when the run noted no weights."""
    weights, exposure, gross = regime_frames(notes)
    if weights.empty:
        return None
    figure = Figure(figsize=(11.0, 8.5))
    FigureCanvasAgg(figure)
    top, middle, bottom = figure.subplots(3, 1, sharex=True, height_ratios=[1.2, 1.4, 1.0])
    curve = cumulative_returns(run.equity)
    top.plot(_times(curve.index), curve.to_numpy(), color="black", lw=1.8, label=run.name)
    top.axhline(0.0, color="0.5", lw=0.8)
    top.set_ylabel("cumulative return")
    top.set_title(title or f"{run.name}: equity, controller weights and exposure")
    palette = colormaps["tab10"].colors
    x = _times(weights.index)
    middle.stackplot(
        x,
        weights.to_numpy().T,
        labels=list(weights.columns),
        colors=[palette[i % len(palette)] for i in range(weights.shape[1])],
        alpha=0.9,
    )
    middle.set_ylim(0.0, 1.0)
    middle.set_ylabel("controller weight\n(mean over coins)")
    bottom.plot(x, exposure.mean(axis=1).to_numpy(), color="tab:blue", lw=1.2,
                label="mean coin exposure")  # fmt: skip
    if len(gross) and not np.allclose(gross.to_numpy(), 1.0):
        bottom.plot(_times(gross.index), gross.to_numpy(), color="tab:red", lw=1.4,
                    label="manager: gross exposure")  # fmt: skip
    bottom.set_ylim(0.0, 1.05)
    bottom.set_ylabel("exposure")
    locator = AutoDateLocator()
    for axes in (top, middle, bottom):
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.grid(True, color="0.9", lw=0.6)
        handles, labels = axes.get_legend_handles_labels()
        if handles:
            axes.legend(handles[::-1] if axes is middle else handles,
                        labels[::-1] if axes is middle else labels, loc="upper left",
                        bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # fmt: skip
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    bottom.set_xlabel("date (UTC)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path
