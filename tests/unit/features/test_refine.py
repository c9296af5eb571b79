"""The refinement kernel: day windows, rolling z-score, rolling PCA with a fixed width."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bot.timeframes import DAY_MS, HOUR_MS
from strategies.features.refine import (
    DayWindow,
    Refiner,
    RefinerParams,
    fit_refiner,
    heavy_tailed_positive,
    zscore,
)


def _params(m: int = 3, k: int = 2, **overrides: object) -> RefinerParams:
    reference = tuple(tuple(1.0 if i == c else 0.0 for i in range(m)) for c in range(k))
    fields = dict(
        metric_ids=tuple(f"A:m{i}" for i in range(m)),
        log_transform=(False,) * m,
        n_components=k,
        reference_components=reference,
        norm_window_days=20,
        pca_window_days=30,
        min_periods=10,
        pca_variance=0.8,
    )
    return RefinerParams(**(fields | overrides))  # type: ignore[arg-type]


def test_day_window_keeps_the_last_rows_oldest_first_and_replaces_same_day_rows() -> None:
    window = DayWindow(3, 1)
    for day in range(5):
        window.put(day, np.array([float(day)]))
    assert window.window()[:, 0].tolist() == [2.0, 3.0, 4.0]
    window.put(4, np.array([40.0]))  # a second step on day 4 replaces its row
    assert window.window()[:, 0].tolist() == [2.0, 3.0, 40.0]
    assert window.days_seen == 5


def test_putting_many_rows_at_once_leaves_the_buffer_of_putting_them_one_by_one() -> None:
    rng = np.random.default_rng(11)
    for _ in range(500):
        capacity = int(rng.integers(2, 8))
        one_by_one, at_once = DayWindow(capacity, 2), DayWindow(capacity, 2)
        day = int(rng.integers(0, 3))
        for _ in range(int(rng.integers(1, 5))):  # a few batches, the last day carried over
            days = day + np.cumsum(rng.choice([0, 0, 1, 1, 2], size=int(rng.integers(0, 12))))
            day = int(days[-1]) if len(days) else day
            rows = rng.random((len(days), 2))
            for d, row in zip(days.tolist(), rows, strict=True):
                one_by_one.put(d, row)
            at_once.put_many(days, rows)
            assert np.array_equal(at_once._buffer, one_by_one._buffer)
            state = ("_slot", "_day", "rows", "days_seen")
            assert [getattr(at_once, a) for a in state] == [getattr(one_by_one, a) for a in state]


def test_zscore_is_zero_for_unknown_constant_or_single_valued_columns() -> None:
    window = np.array([[1.0, 5.0, np.nan, 1.0], [2.0, 5.0, np.nan, np.nan], [3.0, 5.0, 7.0, 2.0]])
    z = zscore(np.array([3.0, 5.0, 7.0, np.nan]), window)
    assert z[0] == pytest.approx((3.0 - 2.0) / np.std([1.0, 2.0, 3.0]))
    assert z[1:].tolist() == [0.0, 0.0, 0.0]


def test_zscore_of_a_column_does_not_depend_on_unknown_values_in_other_columns() -> None:
    rng = np.random.default_rng(6)
    window, x = rng.standard_normal((50, 4)), rng.standard_normal(4)
    with_unknown = np.column_stack([window, np.full(50, np.nan)])
    both = zscore(np.r_[x, 1.0], with_unknown)
    assert np.array_equal(both[:4], zscore(x, window)) and both[4] == 0.0


def test_features_are_zero_and_not_ready_before_min_periods_days() -> None:
    refiner = Refiner(_params())
    rng = np.random.default_rng(0)
    for day in range(9):
        refiner.step(day * DAY_MS + HOUR_MS, rng.standard_normal(3))
        refiner.step(day * DAY_MS + 7 * HOUR_MS, rng.standard_normal(3))  # same day: no new row
        assert not refiner.ready
        assert refiner.features.tolist() == [0.0, 0.0]
        assert math.isnan(refiner.explained_variance)
    refiner.step(9 * DAY_MS, rng.standard_normal(3))
    assert refiner.ready and refiner.days_seen == 10
    assert refiner.features.shape == (2,) and np.all(refiner.features != 0)
    assert 0 < refiner.explained_variance <= 1


def test_components_are_sign_aligned_with_the_reference() -> None:
    positive, negative = (
        Refiner(_params()),
        Refiner(_params(reference_components=((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))),
    )
    rng = np.random.default_rng(1)
    for day in range(40):
        x = rng.standard_normal(3)
        positive.step(day * DAY_MS, x)
        negative.step(day * DAY_MS, x)
        assert negative.features[0] == -positive.features[0]
        assert negative.features[1] == positive.features[1]


def test_log_transform_applies_only_to_chosen_metrics_and_rejects_non_positive_values() -> None:
    refiner = Refiner(_params(log_transform=(True, False, True)))
    x = refiner.transform(np.array([math.e, -1.0, -1.0]))
    assert x[0] == 1.0 and x[1] == -1.0 and math.isnan(x[2])


def test_heavy_tailed_positive_series_are_log_transformed() -> None:
    rng = np.random.default_rng(2)
    assert heavy_tailed_positive(np.exp(rng.standard_normal(500)))
    assert not heavy_tailed_positive(10 + rng.standard_normal(500))
    assert not heavy_tailed_positive(np.r_[0.0, np.exp(rng.standard_normal(500))])
    assert not heavy_tailed_positive(np.full(10, 3.0))


def test_k_is_the_smallest_number_of_components_reaching_the_variance_target() -> None:
    rng = np.random.default_rng(3)
    common = rng.standard_normal(200)
    values = np.column_stack(
        [common, common + 0.05 * rng.standard_normal(200), rng.standard_normal(200)]
    )
    ts = np.arange(200) * DAY_MS
    kwargs = dict(norm_window_days=20, pca_window_days=30, min_periods=10)
    ids = ("A:a", "A:b", "A:c")
    loose = fit_refiner(ids, ts, values, values, pca_variance=0.6, **kwargs)
    tight = fit_refiner(ids, ts, values, values, pca_variance=0.9, **kwargs)
    assert loose.n_components == 1 and tight.n_components == 2
    assert sum(loose.fit_variance_ratios) == pytest.approx(1.0)
    assert loose.explained_variance_at_fit >= 0.6
    assert len(tight.reference_components) == 2
    # the fit fixes each reference's sign: its largest entry is positive
    for row in tight.reference_components:
        assert max(row, key=abs) > 0


def test_fit_refuses_a_window_too_short_for_the_pca() -> None:
    ts = np.arange(5) * DAY_MS
    values = np.random.default_rng(4).standard_normal((5, 2))
    with pytest.raises(ValueError, match="at least 2 are needed"):
        fit_refiner(
            ("A:a", "A:b"),
            ts,
            values,
            values,
            norm_window_days=20,
            pca_window_days=30,
            min_periods=10,
            pca_variance=0.8,
        )


def test_a_step_reads_a_bounded_window_whatever_the_history() -> None:
    refiner = Refiner(_params())
    rng = np.random.default_rng(5)
    for day in range(500):
        refiner.step(day * DAY_MS, rng.standard_normal(3))
    assert refiner._values.window().shape == (20, 3)
    assert refiner._scores.window().shape == (30, 3)


def test_params_round_trip_through_a_dict() -> None:
    params = _params(fit_variance_ratios=(0.5, 0.3, 0.2))
    assert RefinerParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="n_components"):
        _params(k=4)


def _refiner_state(refiner: Refiner) -> tuple:
    windows = [
        (w._buffer.tobytes(), w._slot, w._day, w.rows, w.days_seen)
        for w in (refiner._values, refiner._scores)
    ]
    return (
        windows,
        refiner.features.tobytes(),
        refiner.z.tobytes(),
        refiner.ready,
        np.float64(refiner.explained_variance).tobytes(),
    )


@pytest.mark.parametrize("pass_elements", [1, 5_000, 2_000_000])
def test_steps_at_once_give_the_bits_of_steps_one_by_one(monkeypatch, pass_elements) -> None:
    import strategies.features.refine as refine

    monkeypatch.setattr(refine, "PASS_ELEMENTS", pass_elements)  # passes of 1, a few, all steps
    rng = np.random.default_rng(7)
    n = 160
    ts = np.sort(rng.integers(0, 120, n)) * DAY_MS + rng.integers(0, 24, n) * HOUR_MS
    ts = np.unique(ts)  # several steps on some days, none on others
    values = np.exp(rng.standard_normal((len(ts), 4)))
    values[rng.random(values.shape) < 0.1] = np.nan  # unknown values
    values[:12, 3] = np.nan  # a metric not known at first
    values[40, 0] = -1.0  # a non-positive value of a logged metric
    params = _params(m=4, log_transform=(True, False, True, False))
    one_by_one, at_once = Refiner(params), Refiner(params)
    rows = []
    for t, row in zip(ts, values, strict=True):
        one_by_one.step(int(t), row)
        rows.append((one_by_one.features.copy(), one_by_one.ready, one_by_one.explained_variance))
    days = ts // DAY_MS
    # The second batch continues from the first's state, on the day its last step had.
    split = next(i for i in range(70, len(ts)) if days[i] == days[i - 1])
    first = at_once.steps(ts[:split], values[:split])
    second = at_once.steps(ts[split:], values[split:])
    features = np.concatenate((first.features, second.features))
    assert np.array_equal(features, np.array([r[0] for r in rows]))
    assert np.concatenate((first.ready, second.ready)).tolist() == [r[1] for r in rows]
    variance = np.concatenate((first.explained_variance, second.explained_variance))
    assert np.array_equal(variance, np.array([r[2] for r in rows]), equal_nan=True)
    assert _refiner_state(at_once) == _refiner_state(one_by_one)
    assert any(r[1] for r in rows) and not all(r[1] for r in rows)
