"""The linear probe (:mod:`backtest.probe`): it fits only on what was known at the refit, and
times a coin when its inputs hold the information."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from backtest import probe, timing
from backtest.walkforward import Fold
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from strategies.agents.train import CoinHistory
from strategies.features.inputs import CoinInputs

T0 = to_ms("2021-01-01")
STEP = 6 * HOUR_MS
N = 900
# training closes 100..500, validation 500..600, refit at close 600, test 600..900 (by index)
FOLD = Fold(
    0,
    T0 + 600 * STEP,
    T0 + 900 * STEP,
    (T0 + 100 * STEP, T0 + 500 * STEP),
    (T0 + 500 * STEP, T0 + 600 * STEP),
)


def _history(closes: np.ndarray, feature: np.ndarray) -> CoinHistory:
    """Bars whose close times are T0 + i * STEP, i = 0..N-1."""
    ohlcv = np.column_stack([closes, closes, closes, closes, np.ones(len(closes))])
    return CoinHistory(
        "BTC", "6h", T0 + (np.arange(len(closes)) - 1) * STEP, ohlcv, feature[:, None],
        np.ones(len(closes), dtype=bool), ("f",),
    )  # fmt: skip


def _closes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.02, N))


def test_fit_rows_end_by_the_refit() -> None:
    close_time = T0 + np.arange(N) * STEP
    usable = np.ones(N, dtype=bool)
    for horizon in (1, 28):
        rows = probe.fit_rows(close_time, usable, FOLD, horizon)
        fitted = np.flatnonzero(rows)
        assert fitted[0] == 100
        assert close_time[fitted[-1] + horizon] <= FOLD.start_ms  # its target closed by then
        assert fitted[-1] == 600 - horizon
    usable[300] = False
    assert not probe.fit_rows(close_time, usable, FOLD, 1)[300]


def test_the_fit_reads_nothing_after_the_refit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two histories equal up to the refit's close and different after it: the regression is
    fitted on the same rows and targets."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Recording(probe.Ridge):
        def fit(self, x, y, sample_weight=None):  # type: ignore[no-untyped-def]
            seen.append((np.array(x), np.array(y)))
            return super().fit(x, y)

    monkeypatch.setattr(probe, "Ridge", Recording)
    closes = _closes(1)
    rng = np.random.default_rng(2)
    feature = rng.normal(size=N)
    other_closes, other_feature = closes.copy(), feature.copy()
    other_closes[601:] *= np.exp(np.cumsum(rng.normal(0.0, 0.05, N - 601)))  # 600 closes at
    other_feature[601:] = rng.normal(size=N - 601)  # the refit: known then
    for horizon in (1, 28):
        seen.clear()
        for history in (_history(closes, feature), _history(other_closes, other_feature)):
            probe.fold_positions(history, FOLD, horizon, *probe.probe_inputs(history))
        (x1, y1), (x2, y2) = seen
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_an_informative_input_is_timed_and_its_positions_cover_the_test_closes() -> None:
    """A planted input that tells the next bar's direction: the probe learns it on the fit's
    days and times the test bars with it."""
    closes = _closes(3)
    ahead = np.r_[closes[1:] / closes[:-1] - 1.0, 0.0]
    rng = np.random.default_rng(4)
    feature = np.sign(ahead) + rng.normal(0.0, 0.3, N)
    history = _history(closes, feature)
    held, rows = probe.fold_positions(history, FOLD, 1, *probe.probe_inputs(history))
    assert rows == 500  # closes 100..599: the last one's next close is the refit's
    assert held.index.tolist() == (T0 + np.arange(600, 900) * STEP).tolist()
    series = timing.next_bar_returns(pd.Series(closes, index=T0 + np.arange(N) * STEP), "6h")
    result = timing.sleeve_timing([held], series, 1460.0, 28)
    assert result.timing > 0 and result.p_value < 0.01


def test_the_input_sets_read_the_raw_metrics_as_known_at_each_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``selected`` holds the DRU's selected metrics' latest raw values, ``own`` every metric of
    the coin, ``planted`` only when the truth is given; each with the three returns. (The
    ``normalised`` stage is the refiner's, tested with a fitted spec in the features' tests.)"""
    z_stage = np.full((N, 1), 0.5), np.ones(N, dtype=bool)
    monkeypatch.setattr(probe, "normalised_at_bars", lambda spec, metrics, ts: z_stage)
    closes = _closes(5)
    history = _history(closes, np.zeros(N))
    days = T0 - STEP + np.arange(0, N * STEP, DAY_MS)  # one value per day, known a day later
    metrics = pd.DataFrame(
        {
            "asset": "BTC",
            "name": np.repeat(["s.lead", "s.noise"], len(days)),
            "observed_at": np.tile(days, 2),
            "value": np.r_[np.arange(len(days)), -np.arange(len(days))].astype(float),
        }
    )
    inputs = CoinInputs("BTC", "6h", pd.DataFrame(), metrics)
    spec = SimpleNamespace(metric_ids=("BTC:s.lead",), known_delay_ms=DAY_MS)
    own = ("s.lead", "s.noise")
    sets = probe.input_sets(history, inputs, spec, own)  # type: ignore[arg-type]
    assert set(sets) == {"dru", "normalised", "selected", "own"}
    assert np.array_equal(sets["normalised"][0][:, 0], z_stage[0][:, 0])
    x, usable = sets["selected"]
    assert x.shape == (N, 1 + len(probe.PRICE_LAGS))
    at = np.searchsorted(days + DAY_MS, history.close_time, side="right") - 1  # last known day
    known = at >= 0
    assert np.array_equal(x[known, 0], at[known].astype(float))
    assert np.isnan(x[~known, 0]).all() and not usable[~known].any()
    assert sets["own"][0].shape[1] == 2 + len(probe.PRICE_LAGS)
    with_truth = probe.input_sets(history, inputs, spec, own, ("s.lead",))  # type: ignore[arg-type]
    assert np.array_equal(with_truth["planted"][0], x, equal_nan=True)


def test_a_set_with_too_few_fit_rows_holds_cash_and_the_report_says_so() -> None:
    closes = _closes(6)
    history = _history(closes, np.zeros(N))
    x, usable = probe.probe_inputs(history)
    usable[: 600 - 50] = False  # only the last 50 closes before the refit are known
    held, rows = probe.fold_positions(history, FOLD, 1, x, usable)
    assert rows == 50 < probe.MIN_FIT_ROWS and not held.any()
    document = {
        "alpha": 1.0, "price_lags": [1, 4, 28], "folds": ["f0"], "bars_per_year": 1460.0,
        "min_shift_bars": 28, "min_fit_rows": probe.MIN_FIT_ROWS, "portfolios": {},
        "fit_rows": {"BTC": {"own": {1: [50], 28: [400]}}},
    }  # fmt: skip
    assert "Not fitted (fewer than 120 fit rows; cash there): BTC own 1 bars, fold 0 (50 rows)" in (
        probe.probe_markdown(document)
    )


def test_a_truth_that_does_not_describe_the_market_is_refused() -> None:
    metrics = pd.DataFrame(
        {"asset": ["BTC"], "name": ["s.lead"], "observed_at": [0], "value": [1.0]}
    )
    inputs = {"BTC": CoinInputs("BTC", "6h", pd.DataFrame(), metrics)}
    probe.check_planted(inputs, {"BTC": ("s.lead",)})
    with pytest.raises(probe.PlantedMismatch, match=r"no metric 's\.other'"):
        probe.check_planted(inputs, {"BTC": ("s.other",)})
    with pytest.raises(probe.PlantedMismatch, match="no metrics for BTC"):
        probe.check_planted(inputs, {"ETH": ("s.lead",)})
