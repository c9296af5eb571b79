"""The one feature function: batch == bar-by-bar (bit-identical), and no look-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bot.events import Bar, Metric
from bot.timeframes import DAY_MS, HOUR_MS
from strategies.features.pipeline import (
    FeatureFrame,
    FeatureSpec,
    FeatureState,
    _metric_columns,
    compute_features,
    metrics_in_time,
    normalised_at_bars,
)
from tests.unit.features.conftest import TRAIN_DAYS, fit_toy_spec
from tests.unit.features.toy_market import TIMEFRAME_MS, ToyMarket


def _bar_events(bars: pd.DataFrame) -> list[Bar]:
    return [
        Bar(int(t) + TIMEFRAME_MS, "toy", "AAA/USDT", "6h", int(t), o, h, lo, c, v)
        for t, o, h, lo, c, v in bars.itertuples(index=False, name=None)
    ]


def _metric_events(metrics: pd.DataFrame) -> list[Metric]:
    frame = metrics.sort_values("known_at", kind="stable")
    return [
        Metric(int(k), str(a), str(n), int(o), float(v))
        for a, n, o, k, v in frame[
            ["asset", "name", "observed_at", "known_at", "value"]
        ].itertuples(index=False, name=None)
    ]


def _replay(
    spec: FeatureSpec, bars: pd.DataFrame, metrics: pd.DataFrame, *, metrics_first: bool = False
) -> FeatureFrame:
    """Bar-by-bar features, with events in publish order (a metric known at a bar's close is
    published before that bar), or with every metric delivered before the first bar."""
    state = FeatureState(spec, TIMEFRAME_MS)
    bar_events, metric_events = _bar_events(bars), _metric_events(metrics)
    if metrics_first:
        for metric in metric_events:
            state.on_metric(metric)
    rows, ready, variance, next_metric = [], [], [], 0
    for bar in bar_events:
        while not metrics_first and next_metric < len(metric_events):
            if metric_events[next_metric].ts > bar.ts:
                break
            state.on_metric(metric_events[next_metric])
            next_metric += 1
        rows.append(state.on_bar(bar))
        ready.append(state.ready)
        variance.append(state.explained_variance)
    close = bars["open_time"].to_numpy() + TIMEFRAME_MS
    features = np.array(rows).reshape(len(rows), spec.width)
    return FeatureFrame(close, features, np.array(ready), np.array(variance), spec.feature_names)


def _assert_identical(a: FeatureFrame, b: FeatureFrame, rows: slice = slice(None)) -> None:
    assert np.array_equal(a.close_time[rows], b.close_time[rows])
    assert np.array_equal(a.features[rows], b.features[rows])
    assert np.array_equal(a.ready[rows], b.ready[rows])
    assert np.array_equal(a.explained_variance[rows], b.explained_variance[rows], equal_nan=True)


def _with_revisions_and_backfills(toy: ToyMarket) -> pd.DataFrame:
    """The toy metrics plus revised values (same day, known later) and late rows for old days."""
    metrics = toy.metrics
    revised = metrics.iloc[::17].assign(
        known_at=lambda f: f["known_at"] + 2 * DAY_MS + 5 * HOUR_MS,
        value=lambda f: f["value"] * 1.1,
    )
    backfill = metrics.iloc[5::23].assign(
        known_at=lambda f: f["known_at"] + 9 * DAY_MS, value=lambda f: f["value"] * 3.0
    )
    return pd.concat([metrics, revised, backfill], ignore_index=True)


def test_fitted_spec_has_fixed_width_and_becomes_ready(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    frame = compute_features(toy_spec, toy.bars["AAA"], toy.metrics, TIMEFRAME_MS)
    assert toy_spec.width >= 1 and len(toy_spec.metric_ids) == 10
    assert frame.features.shape == (len(toy.bars["AAA"]), toy_spec.width)
    assert not frame.ready[0] and frame.ready[-1]
    assert np.all(frame.features[~frame.ready] == 0)
    assert np.all(
        (frame.explained_variance[frame.ready] > 0) & (frame.explained_variance[frame.ready] <= 1)
    )
    assert list(frame.to_frame().columns) == [
        *toy_spec.feature_names,
        "ready",
        "explained_variance",
    ]


def test_batch_and_bar_by_bar_features_are_bit_identical(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    metrics = _with_revisions_and_backfills(toy)
    bars = toy.bars["AAA"].drop(index=range(500, 507))  # a gap in the bars too
    batch = compute_features(toy_spec, bars, metrics, TIMEFRAME_MS)
    _assert_identical(batch, _replay(toy_spec, bars, metrics))
    # Metrics delivered early are held until they are known: same features.
    _assert_identical(batch, _replay(toy_spec, bars, metrics, metrics_first=True))


@pytest.mark.parametrize("cut_day", [TRAIN_DAYS - 40, TRAIN_DAYS + 50])
def test_changing_any_input_after_t_leaves_every_feature_up_to_t_unchanged(
    toy_spec: FeatureSpec, toy: ToyMarket, cut_day: int
) -> None:
    bars, metrics = toy.bars["AAA"], toy.metrics
    t = toy.start_ms + cut_day * DAY_MS + 12 * HOUR_MS
    before = compute_features(toy_spec, bars, metrics, TIMEFRAME_MS)
    up_to_t = slice(0, int(np.sum(before.close_time <= t)))  # bars closing at or before t

    rng = np.random.default_rng(99)
    late_bar = (bars["open_time"] + TIMEFRAME_MS > t).to_numpy()
    changed_bars = bars.copy()
    for column in ("open", "high", "low", "close", "volume"):
        changed_bars.loc[late_bar, column] *= rng.uniform(0.5, 2.0, late_bar.sum())
    changed_bars = changed_bars.drop(index=changed_bars.index[late_bar][::5])
    late = (metrics["known_at"] > t).to_numpy()
    # includes values observed before t but known after t
    assert (late & (metrics["observed_at"] < t).to_numpy()).any()
    changed_metrics = metrics.copy()
    changed_metrics.loc[late, "value"] = rng.standard_normal(late.sum()) * 1e6
    extra = metrics.loc[late].iloc[:40].assign(observed_at=lambda f: f["observed_at"] + 3 * DAY_MS)
    changed_metrics = pd.concat([changed_metrics.drop(index=metrics.index[late][::7]), extra])

    after = compute_features(toy_spec, changed_bars, changed_metrics, TIMEFRAME_MS)
    _assert_identical(before, after, up_to_t)
    assert not np.array_equal(before.features[-1], after.features[-1])  # later ones did change
    replayed = _replay(toy_spec, changed_bars, changed_metrics)
    _assert_identical(before, replayed, up_to_t)

    # Not vacuous: a change known at or before t does change a feature at or before t.
    early = changed_metrics.copy()
    target = (early["known_at"] <= t - 10 * DAY_MS) & (early["known_at"] > t - 12 * DAY_MS)
    early.loc[target, "value"] *= 5.0
    touched = compute_features(toy_spec, bars, early, TIMEFRAME_MS)
    assert not np.array_equal(before.features[up_to_t], touched.features[up_to_t])


def test_features_change_only_at_bars_where_a_new_value_became_known(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    frame = compute_features(toy_spec, toy.bars["AAA"], toy.metrics, TIMEFRAME_MS)
    selected = toy.metrics.assign(id=toy.metrics["asset"] + ":" + toy.metrics["name"])
    known = np.sort(selected.loc[selected["id"].isin(toy_spec.metric_ids), "known_at"].to_numpy())
    close = frame.close_time
    news = np.searchsorted(known, close[1:], side="right") > np.searchsorted(
        known, close[:-1], side="right"
    )
    moved = np.any(frame.features[1:] != frame.features[:-1], axis=1)
    assert moved.any()
    assert not np.any(moved & ~news)


def test_a_value_is_never_visible_before_its_day_has_ended_plus_the_lag(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    honest = toy.metrics.assign(known_at=toy.metrics["observed_at"] + toy_spec.known_delay_ms)
    claims_early = toy.metrics.assign(known_at=toy.metrics["observed_at"])
    without = toy.metrics.drop(columns="known_at")
    bars = toy.bars["AAA"]
    reference = compute_features(toy_spec, bars, honest, TIMEFRAME_MS)
    _assert_identical(reference, compute_features(toy_spec, bars, claims_early, TIMEFRAME_MS))
    _assert_identical(reference, compute_features(toy_spec, bars, without, TIMEFRAME_MS))


def test_backfilled_old_days_change_nothing(toy_spec: FeatureSpec, toy: ToyMarket) -> None:
    backfill = toy.metrics.iloc[5::11].assign(
        known_at=lambda f: f["known_at"] + 9 * DAY_MS, value=-123.0
    )
    bars = toy.bars["AAA"]
    _assert_identical(
        compute_features(toy_spec, bars, toy.metrics, TIMEFRAME_MS),
        compute_features(toy_spec, bars, pd.concat([toy.metrics, backfill]), TIMEFRAME_MS),
    )


def test_json_round_trip_of_the_spec_gives_identical_features(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    again = FeatureSpec.from_json(toy_spec.to_json())
    assert again == toy_spec
    bars = toy.bars["AAA"]
    _assert_identical(
        compute_features(toy_spec, bars, toy.metrics, TIMEFRAME_MS),
        compute_features(again, bars, toy.metrics, TIMEFRAME_MS),
    )
    with pytest.raises(ValueError, match="version"):
        FeatureSpec.from_dict(toy_spec.to_dict() | {"version": 99})


def test_an_empty_pool_gives_zero_width_features(toy: ToyMarket) -> None:
    spec = fit_toy_spec(toy, pool=[])
    assert spec.width == 0 and spec.metric_ids == ()
    bars = toy.bars["AAA"]
    frame = compute_features(spec, bars, toy.metrics, TIMEFRAME_MS)
    assert frame.features.shape == (len(bars), 0)
    assert frame.ready.all()
    _assert_identical(frame, _replay(spec, bars, toy.metrics))
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_fewer_candidates_than_keep_still_gives_features(toy: ToyMarket) -> None:
    spec = fit_toy_spec(toy, pool=["AAA:lead_0", "AAA:noise_1", "MKT:mkt_0"])
    assert sorted(spec.metric_ids) == ["AAA:lead_0", "AAA:noise_1", "MKT:mkt_0"]
    bars = toy.bars["AAA"]
    frame = compute_features(spec, bars, toy.metrics, TIMEFRAME_MS)
    assert 1 <= spec.width <= 3 and frame.ready[-1]
    _assert_identical(frame, _replay(spec, bars, toy.metrics))


def test_bars_out_of_order_are_refused(toy_spec: FeatureSpec, toy: ToyMarket) -> None:
    bars = toy.bars["AAA"]
    with pytest.raises(ValueError, match="sorted"):
        compute_features(toy_spec, bars.iloc[::-1], toy.metrics, TIMEFRAME_MS)
    state = FeatureState(toy_spec, TIMEFRAME_MS)
    first, second = _bar_events(bars.iloc[:2])
    state.on_bar(second)
    with pytest.raises(ValueError, match="not after"):
        state.on_bar(first)


def _state_of(state: FeatureState) -> tuple:
    """Everything a FeatureState carries to its next event, comparable with ``==``."""
    refiner = state._refiner
    windows = [
        (w._buffer.tobytes(), w._slot, w._day, w.rows, w.days_seen)
        for w in (refiner._values, refiner._scores)
    ]
    return (
        state._latest.tobytes(),
        list(state._latest_observed),
        sorted(state._pending),
        state._sequence,
        state._last_close,
        windows,
        refiner.features.tobytes(),
        refiner.z.tobytes(),
        refiner.ready,
        np.float64(refiner.explained_variance).tobytes(),
    )


def test_reading_a_history_at_once_leaves_the_state_one_by_one_reading_leaves(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    bars = toy.bars["AAA"]
    metrics = _with_revisions_and_backfills(toy).sort_values("known_at", kind="stable")
    split = 350 * 4  # bars read before the state is compared
    close = bars["open_time"].to_numpy() + TIMEFRAME_MS
    # Everything published up to two days after the last bar read: some of it still pending.
    given = metrics[metrics["known_at"] <= close[split - 1] + 2 * DAY_MS]
    assert (given["observed_at"] + toy_spec.known_delay_ms > close[split - 1]).any()

    one_by_one = FeatureState(toy_spec, TIMEFRAME_MS)
    events = sorted(
        [(b.ts, 1, b) for b in _bar_events(bars.iloc[:split])]
        + [(m.ts, 0, m) for m in _metric_events(given)],
        key=lambda e: (e[0], e[1]),
    )
    expected = []
    for _, _, event in events:
        if isinstance(event, Bar):
            expected.append(one_by_one.on_bar(event))
        else:
            one_by_one.on_metric(event)
    at_once = FeatureState(toy_spec, TIMEFRAME_MS)
    assert at_once.fresh
    frame = at_once.read_history(close[:split], given)
    assert np.array_equal(frame.features, np.array(expected))
    assert _state_of(at_once) == _state_of(one_by_one)
    assert one_by_one._pending  # the comparison covered metrics still waiting

    rest = metrics[metrics["known_at"] > close[split - 1] + 2 * DAY_MS]
    for state in (one_by_one, at_once):
        for metric in _metric_events(rest):
            state.on_metric(metric)
    for bar in _bar_events(bars.iloc[split:]):
        assert np.array_equal(one_by_one.on_bar(bar), at_once.on_bar(bar))
    assert _state_of(at_once) == _state_of(one_by_one)
    with pytest.raises(ValueError, match="fresh"):
        at_once.read_history(close[:1], given)


def test_a_metric_given_after_a_bar_past_its_known_time_is_not_in_time(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    bars = toy.bars["AAA"].iloc[:400]
    close = bars["open_time"].to_numpy() + TIMEFRAME_MS
    metrics = toy.metrics.sort_values("known_at", kind="stable")
    metrics = metrics[metrics["known_at"] <= close[-1]]
    in_order = np.searchsorted(close, metrics["known_at"].to_numpy(), side="left")
    assert metrics_in_time(toy_spec, close, metrics, in_order)
    late = in_order.copy()
    selected = np.flatnonzero(
        (metrics["asset"] + ":" + metrics["name"]).isin(toy_spec.metric_ids).to_numpy()
    )
    late[selected[0]] = len(close)  # given after every bar, although known long before
    assert not metrics_in_time(toy_spec, close, metrics, late)


def test_metric_columns_match_ids_per_pair_as_joining_strings_per_row_would() -> None:
    rng = np.random.default_rng(3)
    assets = np.array(["BTC", "ETH", "x:y", "nan", None], dtype=object)
    names = np.array(["mvrv", "dev", "z", None], dtype=object)
    ids = ["BTC:mvrv", "ETH:dev", "x:y:z", "nan:dev", "ETH:mvrv"]
    for categorical in (False, True):
        for _ in range(50):
            a = pd.Series(assets[rng.integers(0, len(assets), 40)], dtype=object)
            n = pd.Series(names[rng.integers(0, len(names), 40)], dtype=object)
            joined = [
                f"{x}:{y}" if x is not None and y is not None else None
                for x, y in zip(a, n, strict=True)
            ]
            expected = [ids.index(j) if j in ids else -1 for j in joined]
            if categorical:
                a, n = a.astype("category"), n.astype("category")
            assert _metric_columns(a, n, ids).tolist() == expected
    empty = pd.Series([], dtype=object)
    assert _metric_columns(empty, empty, ids).tolist() == []


def test_the_normalised_stage_is_causal_and_ready_with_the_features(
    toy_spec: FeatureSpec, toy: ToyMarket
) -> None:
    """The refiner's z-scores before its PCA (what the probe's ``normalised`` inputs read):
    ready where the features are, and unchanged up to t by anything known after t."""
    bars, metrics = toy.bars["AAA"], toy.metrics
    close_ts = bars["open_time"].to_numpy() + TIMEFRAME_MS
    z, ready = normalised_at_bars(toy_spec, metrics, close_ts)
    features = compute_features(toy_spec, bars, metrics, TIMEFRAME_MS)
    assert z.shape == (len(bars), len(toy_spec.metric_ids))
    assert np.array_equal(ready, features.ready) and ready.any() and not ready.all()
    assert np.abs(z[ready]).max() > 0.5  # real z-scores, not the warm-up's zeros
    t = toy.start_ms + (TRAIN_DAYS + 20) * DAY_MS
    later = metrics.copy()
    late = (later["known_at"] > t).to_numpy()
    later.loc[late, "value"] *= 3.0
    z_later, _ = normalised_at_bars(toy_spec, later, close_ts)
    known = close_ts <= t
    assert np.array_equal(z[known], z_later[known]) and not np.array_equal(z, z_later)
