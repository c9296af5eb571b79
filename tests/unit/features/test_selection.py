"""Metric selection: Pearson with forward returns, top/bottom per horizon, frequency ranking."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from strategies.features.pool import available_metrics, candidate_pool
from strategies.features.selection import (
    Selection,
    daily_closes,
    forward_log_returns,
    select_metrics,
)
from tests.unit.features.toy_market import MARKET_ASSET, TIMEFRAME_MS, toy_market

START = to_ms("2021-01-01")


def _closes(n_days: int, seed: int = 1) -> pd.Series:
    rng = np.random.default_rng(seed)
    days = START + DAY_MS * np.arange(n_days, dtype="int64")
    return pd.Series(100 * np.exp(np.cumsum(0.03 * rng.standard_normal(n_days))), index=days)


def _metric(name: str, values: np.ndarray, asset: str = "AAA") -> pd.DataFrame:
    days = START + DAY_MS * np.arange(len(values), dtype="int64")
    keep = np.isfinite(values)
    return pd.DataFrame(
        {
            "asset": asset,
            "name": name,
            "observed_at": days[keep],
            "known_at": days[keep] + DAY_MS + HOUR_MS,
            "value": values[keep],
        }
    )


def _forward(close: pd.Series, h: int) -> np.ndarray:
    values = close.to_numpy()
    out = np.full(len(values), np.nan)
    out[:-h] = np.log(values[h:] / values[:-h])
    return out


def test_planted_leading_metrics_are_chosen_over_noise() -> None:
    market = toy_market(n_days=500, leading=6, noise=8, market=3, seed=3)
    coin = "AAA"
    pool = candidate_pool(
        coin, available_metrics(market.metrics), market_wide_assets=[MARKET_ASSET]
    )
    selection = select_metrics(
        daily_closes(market.bars[coin], TIMEFRAME_MS),
        market.metrics,
        pool,
        train_start_ms=market.start_ms,
        train_end_ms=market.start_ms + 400 * DAY_MS,
        keep=6,
        per_horizon=3,
    )
    chosen = {metric_id.split(":")[1] for metric_id in selection.kept}
    assert chosen == set(market.planted[coin])


def test_daily_close_is_the_last_close_of_each_utc_day() -> None:
    bars = toy_market(n_days=3).bars["AAA"]
    closes = daily_closes(bars, TIMEFRAME_MS)
    assert list(closes.index) == [START, START + DAY_MS, START + 2 * DAY_MS]
    # the bar opening at 18:00 closes at 24:00 and ends the day
    assert closes.iloc[0] == bars["close"].iloc[3]


def test_label_runs_from_the_end_of_day_d_to_the_end_of_day_d_plus_h() -> None:
    close = _closes(100)
    label = forward_log_returns(close, 12, START, START + 100 * DAY_MS)
    assert label.index[0] == START
    assert label.iloc[0] == np.log(close.iloc[12] / close.iloc[0])
    # the last label must end (close of day D+12, at D + 13 days) inside the window
    assert label.index[-1] + 13 * DAY_MS <= START + 100 * DAY_MS
    assert label.index[-1] + 14 * DAY_MS > START + 100 * DAY_MS


def test_correlation_matches_pearson_on_the_training_days_only() -> None:
    close = _closes(300)
    rng = np.random.default_rng(5)
    signal = _forward(close, 24)
    values = np.where(np.isnan(signal), 0.0, signal) + 0.02 * rng.standard_normal(300)
    metrics = _metric("m", values)
    end = START + 200 * DAY_MS
    selection = select_metrics(
        close, metrics, ["AAA:m"], train_start_ms=START, train_end_ms=end, horizons_days=(24,)
    )
    days = 200 - 24 - 1 + 1  # D + 25 days <= end  ->  D <= day 175
    assert selection.observations == ((days,),)
    expected = np.corrcoef(values[:days], _forward(close, 24)[:days])[0, 1]
    assert selection.correlation("AAA:m", 24) == pytest.approx(expected, abs=1e-12)
    # Data after the training window cannot change the selection.
    later = metrics.assign(value=np.where(metrics["observed_at"] >= end, 1e9, metrics["value"]))
    shifted = close.where(close.index < end, 1.0)
    again = select_metrics(
        shifted, later, ["AAA:m"], train_start_ms=START, train_end_ms=end, horizons_days=(24,)
    )
    assert again == selection


def test_empty_pool_gives_an_empty_selection_with_a_reason() -> None:
    selection = select_metrics(
        _closes(200),
        _metric("m", np.ones(200)),
        [],
        train_start_ms=START,
        train_end_ms=START + 200 * DAY_MS,
    )
    assert selection.kept == ()
    assert "pool is empty" in (selection.empty_reason or "")


def test_fewer_candidates_than_picks_keeps_each_one_once() -> None:
    close = _closes(300)
    rng = np.random.default_rng(2)
    metrics = pd.concat([_metric(f"m{i}", rng.standard_normal(300)) for i in range(3)])
    pool = ["AAA:m0", "AAA:m1", "AAA:m2"]
    selection = select_metrics(
        close, metrics, pool, train_start_ms=START, train_end_ms=START + 300 * DAY_MS
    )
    assert sorted(selection.kept) == pool
    assert selection.pick_counts == (3, 3, 3)  # picked in both lists of a horizon counts once
    assert all(p.picked == frozenset(pool) for p in selection.picks)


def test_constant_and_short_series_are_excluded_with_reasons() -> None:
    close = _closes(300)
    rng = np.random.default_rng(4)
    short = np.full(300, np.nan)
    short[::5] = rng.standard_normal(60)  # sparse: 58 labelled days at 12 d, 51 at 48 d
    metrics = pd.concat(
        [
            _metric("flat", np.full(300, 7.0)),
            _metric("short", short),
            _metric("good", rng.standard_normal(300)),
        ]
    )
    selection = select_metrics(
        close,
        metrics,
        ["AAA:flat", "AAA:short", "AAA:good", "AAA:absent"],
        train_start_ms=START,
        train_end_ms=START + 300 * DAY_MS,
    )
    assert selection.kept == ("AAA:good",)
    reasons = {(e.metric_id, e.horizon_days): e.reason for e in selection.exclusions}
    assert reasons[("AAA:flat", 12)] == "constant on the labelled training days"
    assert reasons[("AAA:short", 48)].startswith("only 51 labelled days")
    assert reasons[("AAA:absent", 24)].startswith("only 0 labelled days")
    assert math.isnan(selection.correlation("AAA:flat", 24))


def test_a_metric_that_stopped_before_the_end_of_training_is_excluded_as_stale() -> None:
    close = _closes(300)
    values = np.random.default_rng(7).standard_normal(300)
    values[200:] = np.nan
    kwargs = dict(train_start_ms=START, train_end_ms=START + 300 * DAY_MS)
    selection = select_metrics(close, _metric("m", values), ["AAA:m"], **kwargs)
    assert selection.kept == ()
    (exclusion,) = selection.exclusions
    assert exclusion.horizon_days is None
    assert exclusion.reason.startswith("stale: last value on 2021-07-19")
    assert Selection.from_dict(selection.to_dict()).to_dict() == selection.to_dict()
    lenient = select_metrics(close, _metric("m", values), ["AAA:m"], max_stale_days=None, **kwargs)
    assert lenient.kept == ("AAA:m",)


def test_gaps_remove_days_from_the_pairs() -> None:
    close = _closes(300)
    values = np.random.default_rng(6).standard_normal(300)
    values[::3] = np.nan
    selection = select_metrics(
        close,
        _metric("m", values),
        ["AAA:m"],
        train_start_ms=START,
        train_end_ms=START + 300 * DAY_MS,
    )
    labelled = 300 - 12  # day D needs D + 13 days <= the end of the window
    assert selection.observations[0][0] == labelled - len(range(0, labelled, 3))


def test_ties_break_by_mean_abs_correlation_then_by_id() -> None:
    close = _closes(300)
    rng = np.random.default_rng(8)
    base = _forward(close, 24)
    base = np.where(np.isnan(base), 0.0, base)
    strong = base + 0.01 * rng.standard_normal(300)
    weak = base + 0.2 * rng.standard_normal(300)
    metrics = pd.concat(
        [
            _metric("z_twin", strong),
            _metric("a_twin", strong),  # identical values: identical coefficients
            _metric("weak", weak),
        ]
        + [_metric(f"n{i}", rng.standard_normal(300)) for i in range(12)]
    )
    pool = sorted(f"AAA:{n}" for n in metrics["name"].unique())
    kwargs = dict(train_start_ms=START, train_end_ms=START + 300 * DAY_MS, per_horizon=3, keep=3)
    selection = select_metrics(close, metrics, pool, **kwargs)
    # all three are picked in every horizon; the twins tie on |r| too and break by id
    assert selection.kept == ("AAA:a_twin", "AAA:z_twin", "AAA:weak")
    assert selection.pick_count("AAA:weak") == selection.pick_count("AAA:a_twin") == 3
    assert selection.mean_abs_correlation("AAA:a_twin") > selection.mean_abs_correlation("AAA:weak")
    # The pool's order does not matter.
    assert select_metrics(close, metrics, pool[::-1], **kwargs).kept == selection.kept


def test_selection_round_trips_through_json() -> None:
    market = toy_market(n_days=300)
    pool = candidate_pool("AAA", available_metrics(market.metrics), market_wide_assets=["MKT"])
    pool.append("AAA:missing")
    selection = select_metrics(
        daily_closes(market.bars["AAA"], TIMEFRAME_MS),
        market.metrics,
        pool,
        train_start_ms=market.start_ms,
        train_end_ms=market.start_ms + 300 * DAY_MS,
    )
    text = json.dumps(selection.to_dict(), allow_nan=False)
    again = Selection.from_dict(json.loads(text))
    assert again.to_dict() == selection.to_dict()
    assert again.kept == selection.kept
    table = selection.correlation_table()
    assert table.shape == (len(pool), 3)
    assert table.loc["AAA:missing"].isna().all()
