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

The same regression runs on several input sets, each with the three returns, so a loss of
information can be placed:

* ``dru``: the DRU's components, what the modules see;
* ``normalised``: the DRU's rolling z-scores of its selected metrics, before its PCA;
* ``selected``: the DRU's selected metrics as raw latest values, before its rolling
  normalisation and PCA;
* ``own``: every metric of the coin's own asset, raw (none for a coin without its own metrics);
* ``planted`` (a synthetic market's ``planted.json`` only): the metrics it planted to lead the
  coin's own drift (BTC's also carry the market's, offered to altcoins as market-wide).

Raw levels that trend out of the range they were fitted on push the prediction to one side, so
a raw set can hold the coin (or cash) most of a fold: compare its time in the coins too. A set
fitted on fewer than :data:`MIN_FIT_ROWS` rows holds cash for that fold, and the report lists it.

Fixed before any run and never tuned: ridge ``alpha`` 1 on inputs standardised on the fit's
rows; horizons of 1 bar and 28 bars (7 days at the bundled walk-forward's 6h bars).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
from strategies.features import FeatureSpec
from strategies.features.inputs import CoinInputs, fit_coin_features, read_coin_inputs
from strategies.features.pipeline import latest_values, normalised_at_bars
from strategies.features.pool import qualified_id
from strategies.updating import causal_inputs

HORIZONS = (1, 28)
ALPHA = 1.0
PRICE_LAGS = (1, 4, 28)
INPUT_SETS = ("dru", "normalised", "selected", "own")
MIN_FIT_ROWS = 120
"""Fewer usable fit rows than this (30 days of 6h bars) and the set is not fitted for the fold:
it holds cash there, and ``probe.json``/``probe.md`` say so."""


def price_lags(history: CoinHistory) -> np.ndarray:
    """The coin's log returns over the last :data:`PRICE_LAGS` bars at each close (NaN before)."""
    log_close = np.log(history.ohlcv[:, 3])
    returns = np.full((len(log_close), len(PRICE_LAGS)), np.nan)
    for j, lag in enumerate(PRICE_LAGS):
        returns[lag:, j] = log_close[lag:] - log_close[:-lag]
    return returns


def probe_inputs(history: CoinHistory) -> tuple[np.ndarray, np.ndarray]:
    """The ``dru`` input set at each close: the DRU's components and :func:`price_lags`; and
    where all of them are known (the DRU ready)."""
    x = np.column_stack([history.features, price_lags(history)])
    return x, history.ready & np.isfinite(x).all(axis=1)


def input_sets(
    history: CoinHistory,
    inputs: CoinInputs,
    spec: FeatureSpec,
    own: Sequence[str],
    planted: Sequence[str] = (),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every input set (see the module docstring) at each close of ``history``, with where it is
    known; ``own``: the names of the coin's own metrics known at the refit; ``planted``: the
    coin's leading metrics' names, when known (a synthetic market)."""
    prices = price_lags(history)
    coin = inputs.coin

    def raw(metric_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        values = latest_values(inputs.metrics, metric_ids, spec.known_delay_ms, history.close_time)
        x = np.column_stack([values, prices])
        return x, np.isfinite(x).all(axis=1)

    z, ready = normalised_at_bars(spec, inputs.metrics, history.close_time)
    normalised = np.column_stack([z, prices])
    sets = {
        "dru": probe_inputs(history),
        "normalised": (normalised, ready & np.isfinite(normalised).all(axis=1)),
        "selected": raw(spec.metric_ids),
        "own": raw([qualified_id(coin, n) for n in own]),
    }
    if planted:
        sets["planted"] = raw([qualified_id(coin, n) for n in planted])
    return sets


def fit_rows(close_time: np.ndarray, usable: np.ndarray, fold: Fold, horizon: int) -> np.ndarray:
    """The rows the probe fits on: usable closes in the fold's training and validation days
    whose target, ``horizon`` bars later, closed by the refit."""
    ends = np.full(len(close_time), np.iinfo(np.int64).max)
    ends[:-horizon] = close_time[horizon:]
    inside = (close_time >= fold.train[0]) & (close_time < fold.validation[1])
    return usable & inside & (ends <= fold.start_ms)


def fold_positions(
    history: CoinHistory,
    fold: Fold,
    horizon: int,
    x: np.ndarray,
    usable: np.ndarray,
    alpha: float = ALPHA,
) -> tuple[pd.Series, int]:
    """The probe's position (1 coin, 0 cash) at each of ``fold``'s test closes, reading ``x``
    (one row per close of ``history``, known where ``usable``), and how many usable fit rows it
    had (fewer than :data:`MIN_FIT_ROWS`: not fitted, all cash). Closes where an input is
    unknown stay in cash."""
    close = history.ohlcv[:, 3]
    close_time = history.close_time
    target = np.full(len(close), np.nan)
    target[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    rows = fit_rows(close_time, usable, fold, horizon) & np.isfinite(target)
    test = (close_time >= fold.start_ms) & (close_time < fold.end_ms)
    held = np.zeros(int(test.sum()))
    if rows.sum() >= max(MIN_FIT_ROWS, x.shape[1] + 1):
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
    planted: Sequence[str] = (),
) -> tuple[dict[str, dict[int, pd.Series]], dict[str, dict[int, list[int]]]]:
    """Per input set and horizon, the probe's positions over every fold's test closes for one
    coin, and its fit rows per fold."""
    parts: dict[str, dict[int, list[pd.Series]]] = {}
    rows: dict[str, dict[int, list[int]]] = {}
    planted_ids = {qualified_id(inputs.coin, n) for n in planted}
    for fold in folds:
        known = causal_inputs(inputs, fold.start_ms)
        spec = fit_coin_features(cfg, known, *fold.train)
        history = coin_history(inputs.bars, inputs.metrics, inputs.timeframe, spec)
        own = sorted(known.metrics.loc[known.metrics["asset"] == inputs.coin, "name"].unique())
        sets = input_sets(history, inputs, spec, own, planted)
        for name, (x, usable) in sets.items():
            for h in horizons:
                held, fitted = fold_positions(history, fold, h, x, usable)
                parts.setdefault(name, {}).setdefault(h, []).append(held)
                rows.setdefault(name, {}).setdefault(h, []).append(fitted)
        fewest = {n: min(r[h][-1] for h in horizons) for n, r in rows.items()}
        step(
            f"{inputs.coin} fold {fold.index} ({fold.label}): {len(spec.metric_ids)} metrics "
            f"selected, {history.features.shape[1]} DRU components"
            + (f", {len(planted_ids & set(spec.metric_ids))} of them planted" if planted else "")
            + "; fit rows "
            + ", ".join(f"{n} {r}" for n, r in fewest.items())
        )
    positions = {
        name: {h: pd.concat(p).sort_index() for h, p in by_horizon.items()}
        for name, by_horizon in parts.items()
    }
    return positions, rows


class PlantedMismatch(ValueError):
    """A ``planted.json`` that does not describe the walk-forward's market."""


def check_planted(inputs: Mapping[str, CoinInputs], planted: Mapping[str, Sequence[str]]) -> None:
    """:class:`PlantedMismatch`, naming the coin and metric, when ``planted`` misses a coin of
    the run or names a metric its store does not hold (a truth from another market or seed)."""
    for coin, mine in inputs.items():
        names = planted.get(coin)
        if not names:
            raise PlantedMismatch(f"planted: no metrics for {coin}, a coin of this walk-forward")
        held = set(mine.metrics.loc[mine.metrics["asset"] == coin, "name"])
        missing = [n for n in names if n not in held]
        if missing:
            raise PlantedMismatch(
                f"planted: {coin} has no metric {missing[0]!r} in this walk-forward's data "
                "(a planted.json of another market or seed?)"
            )


async def run_probe(
    cfg: AppConfig,
    runs: WalkForwardRuns,
    out_dir: Path,
    horizons: Sequence[int] = HORIZONS,
    step: Callable[[str], None] = lambda text: None,
    planted: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The probe over the folds of the walk-forward in ``out_dir`` (``runs``, its runs), read
    from the stores it imported, with ``cfg`` the configuration it ran with; ``planted``: per
    coin, its leading metrics' names (a synthetic market's truth), adding that input set."""
    from bot.store import MarketStore, MetricStore

    wf_cfg = walkforward_config(cfg, out_dir, runs.spec)
    coins = list(dict.fromkeys(c for p in runs.spec.portfolios for c in PORTFOLIOS[p]))
    async with (
        await MarketStore.open(wf_cfg.data.market_path) as market,
        await MetricStore.open(wf_cfg.data.metrics_path) as metrics,
    ):
        inputs = {c: await read_coin_inputs(wf_cfg, market, metrics, c) for c in coins}
    if planted is not None:
        check_planted(inputs, planted)
    probed = {
        c: probe_positions(
            wf_cfg, inputs[c], runs.folds, horizons, step, (planted or {}).get(c, ())
        )
        for c in coins
    }
    positions = {c: held for c, (held, _) in probed.items()}
    timeframe = wf_cfg.market.timeframe
    per_year, shift = timing.bars_per_year(timeframe), timing.min_shift_bars(timeframe)
    returns = {c: timing.next_bar_returns(runs.closes[c], timeframe) for c in coins}
    names = [n for n in (*INPUT_SETS, "planted") if all(n in positions[c] for c in coins)]
    document: dict[str, Any] = {
        "horizons": list(horizons),
        "inputs": names,
        "alpha": ALPHA,
        "price_lags": list(PRICE_LAGS),
        "folds": [f.label for f in runs.folds],
        "bars_per_year": per_year,
        "min_shift_bars": shift,
        "min_fit_rows": MIN_FIT_ROWS,
        "fit_rows": {c: rows for c, (_, rows) in probed.items()},
        "portfolios": {},
    }
    for portfolio in runs.spec.portfolios:
        rows: dict[str, Any] = {}
        for name in names:
            for h in horizons:
                sleeves = {c: ([positions[c][name][h]], returns[c]) for c in PORTFOLIOS[portfolio]}
                rows.setdefault(name, {})[str(h)] = {
                    "portfolio": timing.portfolio_timing(sleeves, per_year, shift).to_dict(),
                    "coins": {
                        c: timing.sleeve_timing(*s, per_year, shift).to_dict()
                        for c, s in sleeves.items()
                    },
                }
        document["portfolios"][portfolio] = rows
    return document


def probe_markdown(document: dict[str, Any]) -> str:
    """``probe.md``: per portfolio, input set and horizon, the probe's time in the coins and its
    timing."""
    lines = [
        "# Linear probe of the modules' inputs",
        "",
        f"Ridge (alpha {document['alpha']}) on each input set plus the log returns over the last "
        f"{', '.join(map(str, document['price_lags']))} bars, refitted per fold and coin on the "
        "training and validation days; holds the coin while it predicts a rise over the horizon. "
        "Inputs: dru = the DRU's components (what the modules see); normalised = its rolling "
        "z-scores, before the PCA; selected = its selected metrics, raw; own = every metric of "
        "the coin's own asset, raw; planted = the metrics a synthetic market planted to lead "
        f"the coin's own drift. Folds: "
        f"{', '.join(document['folds'])}. Timing per year before costs (mean of next-bar returns "
        f"x {document['bars_per_year']:.0f}); p one-sided against every circular shift of the "
        f"positions at least {document['min_shift_bars']} bars from 0 (below: the other tail).",
        "",
        "| portfolio | inputs | horizon (bars) | in coin | timing | p | p below | per coin: "
        "timing (p) |",
        "| :-- | :-- | --: | --: | --: | --: | --: | :-- |",
    ]
    for name, sets in document["portfolios"].items():
        for inputs, rows in sets.items():
            for horizon, row in rows.items():
                whole = row["portfolio"]
                coins = "; ".join(
                    f"{c} {_pct(d['timing'])} ({_p(d['p_value'])})" for c, d in row["coins"].items()
                )
                lines.append(
                    f"| {name} | {inputs} | {horizon} | {_share(whole['mean_weight'])} | "
                    f"{_pct(whole['timing'])} | {_p(whole['p_value'])} | "
                    f"{_p(whole['p_value_below'])} | {coins} |"
                )
    unfitted = [
        f"{coin} {inputs} {horizon} bars, fold {fold} ({rows} rows)"
        for coin, sets in document.get("fit_rows", {}).items()
        for inputs, by_horizon in sets.items()
        for horizon, per_fold in by_horizon.items()
        for fold, rows in enumerate(per_fold)
        if rows < document.get("min_fit_rows", 0)
    ]
    if unfitted:
        lines += [
            "",
            f"Not fitted (fewer than {document['min_fit_rows']} fit rows; cash there): "
            + "; ".join(unfitted),
        ]
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
