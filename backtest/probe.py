"""A linear probe of the Crypto Modules' inputs: do they hold information about the next bars?

The timing attribution (:mod:`backtest.timing`) says whether a policy's positions timed its
coins better than chance. When a learned policy shows no timing, the question is whether its
networks missed information their inputs hold, or the inputs hold none. The probe asks it the
plainest way, over a finished walk-forward's folds: per fold and coin, a ridge regression
predicts the coin's return over the next ``horizon`` bars from the DRU's components (selected
and fitted on the fold's training days, as the modules' are, and computed causally over the
whole history, where a module computes the same from its warm-up on) and the coin's log returns
over the last 1, 4 and 28 bars. It is fitted on the fold's training and validation days,
leaving out every row whose target ends after the refit, and holds the coin at each of the
fold's test closes while its prediction is above 0. Its positions then take the same timing
test as the policy's.

Fixed before any run and never tuned: ridge ``alpha`` 1 on inputs standardised on the fit's
rows; horizons of 1 bar and 28 bars (7 days at the bundled walk-forward's 6h bars).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from backtest import timing
from backtest.experiment import PORTFOLIOS
from backtest.walkforward import Fold, WalkForwardRuns, walkforward_config
from config.schema import AppConfig
from strategies.agents.train import CoinHistory, coin_history
from strategies.features.inputs import CoinInputs, fit_coin_features, read_coin_inputs
from strategies.updating import causal_inputs

HORIZONS = (1, 28)
ALPHA = 1.0
PRICE_LAGS = (1, 4, 28)


def probe_inputs(history: CoinHistory) -> tuple[np.ndarray, np.ndarray]:
    """What the probe reads at each close: the DRU's components and the log returns over the
    last :data:`PRICE_LAGS` bars; and where all of them are known (the DRU ready)."""
    log_close = np.log(history.ohlcv[:, 3])
    returns = np.full((len(log_close), len(PRICE_LAGS)), np.nan)
    for j, lag in enumerate(PRICE_LAGS):
        returns[lag:, j] = log_close[lag:] - log_close[:-lag]
    x = np.column_stack([history.features, returns])
    return x, history.ready & np.isfinite(x).all(axis=1)


def fit_rows(close_time: np.ndarray, usable: np.ndarray, fold: Fold, horizon: int) -> np.ndarray:
    """The rows the probe fits on: usable closes in the fold's training and validation days
    whose target, ``horizon`` bars later, closed by the refit."""
    ends = np.full(len(close_time), np.iinfo(np.int64).max)
    ends[:-horizon] = close_time[horizon:]
    inside = (close_time >= fold.train[0]) & (close_time < fold.validation[1])
    return usable & inside & (ends <= fold.start_ms)


def fold_positions(
    history: CoinHistory, fold: Fold, horizon: int, alpha: float = ALPHA
) -> tuple[pd.Series, int]:
    """The probe's position (1 coin, 0 cash) at each of ``fold``'s test closes, and how many
    rows it was fitted on. ``history`` holds the coin's bars past the refit with the DRU
    fitted on the fold's training days; closes where an input is unknown stay in cash."""
    close = history.ohlcv[:, 3]
    close_time = history.close_time
    x, usable = probe_inputs(history)
    target = np.full(len(close), np.nan)
    target[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    rows = fit_rows(close_time, usable, fold, horizon) & np.isfinite(target)
    test = (close_time >= fold.start_ms) & (close_time < fold.end_ms)
    held = np.zeros(int(test.sum()))
    if rows.sum() > x.shape[1]:
        scaler = StandardScaler().fit(x[rows])
        model = Ridge(alpha=alpha).fit(scaler.transform(x[rows]), target[rows])
        known = usable[test]
        if known.any():
            held[known] = model.predict(scaler.transform(x[test][known])) > 0.0
    return pd.Series(held, index=close_time[test]), int(rows.sum())


def probe_positions(
    cfg: AppConfig,
    inputs: CoinInputs,
    folds: Sequence[Fold],
    horizons: Sequence[int] = HORIZONS,
    step: Callable[[str], None] = lambda text: None,
) -> dict[int, pd.Series]:
    """Per horizon, the probe's positions over every fold's test closes for one coin."""
    parts: dict[int, list[pd.Series]] = {h: [] for h in horizons}
    for fold in folds:
        spec = fit_coin_features(cfg, causal_inputs(inputs, fold.start_ms), *fold.train)
        history = coin_history(inputs.bars, inputs.metrics, inputs.timeframe, spec)
        fitted = []
        for h in horizons:
            held, rows = fold_positions(history, fold, h)
            parts[h].append(held)
            fitted.append(rows)
        step(
            f"{inputs.coin} fold {fold.index} ({fold.label}): {history.features.shape[1]} DRU "
            f"components, fitted on {min(fitted)}-{max(fitted)} rows"
        )
    return {h: pd.concat(p).sort_index() for h, p in parts.items()}


async def run_probe(
    cfg: AppConfig,
    runs: WalkForwardRuns,
    out_dir: Path,
    horizons: Sequence[int] = HORIZONS,
    step: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """The probe over the folds of the walk-forward in ``out_dir`` (``runs``, its runs), read
    from the stores it imported, with ``cfg`` the configuration it ran with."""
    from bot.store import MarketStore, MetricStore

    wf_cfg = walkforward_config(cfg, out_dir, runs.spec)
    coins = list(dict.fromkeys(c for p in runs.spec.portfolios for c in PORTFOLIOS[p]))
    async with (
        await MarketStore.open(wf_cfg.data.market_path) as market,
        await MetricStore.open(wf_cfg.data.metrics_path) as metrics,
    ):
        inputs = {c: await read_coin_inputs(wf_cfg, market, metrics, c) for c in coins}
    positions = {c: probe_positions(wf_cfg, inputs[c], runs.folds, horizons, step) for c in coins}
    timeframe = wf_cfg.market.timeframe
    per_year, shift = timing.bars_per_year(timeframe), timing.min_shift_bars(timeframe)
    returns = {c: timing.next_bar_returns(runs.closes[c], timeframe) for c in coins}
    document: dict[str, Any] = {
        "horizons": list(horizons),
        "alpha": ALPHA,
        "price_lags": list(PRICE_LAGS),
        "folds": [f.label for f in runs.folds],
        "bars_per_year": per_year,
        "min_shift_bars": shift,
        "portfolios": {},
    }
    for name in runs.spec.portfolios:
        rows: dict[str, Any] = {}
        for h in horizons:
            sleeves = {c: ([positions[c][h]], returns[c]) for c in PORTFOLIOS[name]}
            rows[str(h)] = {
                "portfolio": timing.portfolio_timing(sleeves, per_year, shift).to_dict(),
                "coins": {
                    c: timing.sleeve_timing(*s, per_year, shift).to_dict()
                    for c, s in sleeves.items()
                },
            }
        document["portfolios"][name] = rows
    return document


def probe_markdown(document: dict[str, Any]) -> str:
    """``probe.md``: per portfolio and horizon, the probe's time in the coins and its timing."""
    lines = [
        "# Linear probe of the modules' inputs",
        "",
        f"Ridge (alpha {document['alpha']}) on the DRU's components and the log returns over the "
        f"last {', '.join(map(str, document['price_lags']))} bars, refitted per fold and coin on "
        "the training and validation days; holds the coin while it predicts a rise over the "
        f"horizon. Folds: {', '.join(document['folds'])}. Timing per year before costs (mean of "
        f"next-bar returns x {document['bars_per_year']:.0f}); p one-sided against every circular "
        f"shift of the positions at least {document['min_shift_bars']} bars from 0 (below: the "
        "other tail).",
        "",
        "| portfolio | horizon (bars) | in coin | timing | p | p below | per coin: timing (p) |",
        "| :-- | --: | --: | --: | --: | --: | :-- |",
    ]
    for name, rows in document["portfolios"].items():
        for horizon, row in rows.items():
            whole = row["portfolio"]
            coins = "; ".join(
                f"{c} {_pct(d['timing'])} ({_p(d['p_value'])})" for c, d in row["coins"].items()
            )
            lines.append(
                f"| {name} | {horizon} | {_share(whole['mean_weight'])} | {_pct(whole['timing'])} "
                f"| {_p(whole['p_value'])} | {_p(whole['p_value_below'])} | {coins} |"
            )
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.1%}"


def _share(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.0%}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_probe(document: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``probe.json`` and ``probe.md`` in ``out_dir``."""
    import json

    from backtest.experiment import json_ready

    data, text = Path(out_dir) / "probe.json", Path(out_dir) / "probe.md"
    data.write_text(json.dumps(json_ready(document), indent=1, allow_nan=False) + "\n")
    text.write_text(probe_markdown(document))
    return data, text
