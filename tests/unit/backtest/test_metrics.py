"""Metrics pinned by hand-computed examples and against empyrical-reloaded (a test-only reference).

The reference tests recompute daily returns independently (``datetime`` arithmetic over the
close times) and feed them to ``empyrical``; the drawdown reference gets every close's return.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta

import empyrical as ep
import numpy as np
import pandas as pd
import pytest

from backtest.metrics import METRIC_KEYS, compute_metrics, daily_returns, drawdowns, max_drawdown
from backtest.result import REFUSAL_COLUMNS, REJECTION_COLUMNS, TRADE_COLUMNS, RunResult
from bot.timeframes import DAY_MS, HOUR_MS, to_ms

DAY0 = to_ms("2022-07-01")


def make_run(
    equity: list[float] | np.ndarray,
    close_ms: list[int] | np.ndarray,
    *,
    notionals: list[float] = (),
    fees: float = 0.0,
    initial_cash: float | None = None,
) -> RunResult:
    """A run with the given equity curve and one fill per entry of ``notionals``."""
    index = pd.Index(np.asarray(close_ms, dtype="int64"), name="ts")
    trades = pd.DataFrame(
        [
            (int(close_ms[0]), f"id-{i}", "BTC/USDT", "buy", n / 100.0, 100.0, 0.0, "USDT", n)
            for i, n in enumerate(notionals)
        ],
        columns=TRADE_COLUMNS,
    )
    return RunResult(
        name="run",
        timeframe="6h",
        quote="USDT",
        initial_cash=float(equity[0]) if initial_cash is None else initial_cash,
        equity=pd.Series(np.asarray(equity, dtype=float), index=index, name="equity"),
        weights=pd.DataFrame(index=index),
        trades=trades,
        rejections=pd.DataFrame(columns=REJECTION_COLUMNS),
        refusals=pd.DataFrame(columns=REFUSAL_COLUMNS),
        fees_paid=fees,
    )


def daily_closes(values: list[float]) -> RunResult:
    """One close per day at 00:00 UTC, the first one being the start (the anchor)."""
    return make_run(values, [DAY0 + i * DAY_MS for i in range(len(values))])


def random_walk(seed: int, n: int, start_ms: int, step_ms: int, drift: float = 0.0) -> RunResult:
    rng = np.random.default_rng(seed)
    growth = np.exp(np.cumsum(rng.normal(drift, 0.02, n - 1)))
    return make_run(10_000.0 * np.r_[1.0, growth], start_ms + step_ms * np.arange(n))


# --- hand-computed examples -------------------------------------------------------------------


def test_hand_example_gives_arr_mdd_and_daily_ratios():
    metrics = compute_metrics(daily_closes([100.0, 110.0, 99.0, 120.0]))
    returns = [0.1, -0.1, 120.0 / 99.0 - 1.0]
    mean = statistics.fmean(returns)
    downside = math.sqrt(0.1**2 / 3)
    cagr = 1.2 ** (365 / 3) - 1
    assert metrics["arr"] == pytest.approx(0.2)
    assert metrics["mdd"] == pytest.approx(0.1)
    assert metrics["days"] == 3
    assert metrics["drr"] == pytest.approx(mean)
    assert metrics["sortino"] == pytest.approx(mean / downside * math.sqrt(365))
    assert metrics["sharpe"] == pytest.approx(mean / statistics.stdev(returns) * math.sqrt(365))
    assert metrics["volatility"] == pytest.approx(statistics.stdev(returns) * math.sqrt(365))
    assert metrics["cagr"] == pytest.approx(cagr)
    assert metrics["calmar"] == pytest.approx(cagr / 0.1)
    assert metrics["final_equity"] == 120.0
    assert list(metrics) == list(METRIC_KEYS)


def test_mdd_counts_an_intraday_dip_that_daily_closes_hide():
    closes = [DAY0, DAY0 + 6 * HOUR_MS, DAY0 + 12 * HOUR_MS, DAY0 + DAY_MS]
    run = make_run([100.0, 80.0, 100.0, 105.0], closes)
    assert daily_returns(run).tolist() == pytest.approx([0.05])
    assert compute_metrics(run)["mdd"] == pytest.approx(0.2)


def test_drawdowns_are_zero_at_new_highs_and_positive_below():
    equity = pd.Series([100.0, 120.0, 90.0, 130.0, 117.0])
    assert drawdowns(equity).tolist() == pytest.approx([0.0, 0.0, 0.25, 0.0, 0.1])
    assert max_drawdown(equity) == pytest.approx(0.25)
    assert max_drawdown(pd.Series([], dtype=float)) == 0.0


def test_first_day_of_a_mid_day_start_is_measured_from_the_start():
    start = DAY0 + 6 * HOUR_MS
    closes = [start, start + 6 * HOUR_MS, start + 12 * HOUR_MS, start + 18 * HOUR_MS]
    run = make_run([100.0, 104.0, 101.0, 103.0], closes)  # last close: 00:00 of the next day
    returns = daily_returns(run)
    assert returns.tolist() == pytest.approx([0.03])
    assert returns.index[0] == pd.Timestamp("2022-07-01", tz="UTC")


def test_a_close_at_midnight_counts_in_the_day_it_ends():
    run = make_run([100.0, 102.0, 99.0], [DAY0, DAY0 + 12 * HOUR_MS, DAY0 + DAY_MS])
    returns = daily_returns(run)
    assert returns.tolist() == pytest.approx([-0.01])  # 2022-07-01 ends at 2022-07-02T00:00
    assert list(returns.index) == [pd.Timestamp("2022-07-01", tz="UTC")]


def test_a_calendar_day_without_a_close_counts_as_zero_return():
    run = make_run([100.0, 110.0, 121.0], [DAY0, DAY0 + DAY_MS, DAY0 + 3 * DAY_MS])
    assert daily_returns(run).tolist() == pytest.approx([0.1, 0.0, 0.1])
    assert compute_metrics(run)["days"] == 3


def test_daily_returns_compound_to_arr():
    run = random_walk(7, 4 * 50 + 3, DAY0 + 6 * HOUR_MS, 6 * HOUR_MS)
    growth = float(np.prod(1.0 + daily_returns(run).to_numpy()))
    assert growth - 1.0 == pytest.approx(compute_metrics(run)["arr"], rel=1e-12)


def test_turnover_is_traded_notional_over_mean_equity():
    run = make_run(
        [100.0, 120.0, 110.0, 130.0],
        [DAY0 + i * DAY_MS for i in range(4)],
        notionals=[100.0, -40.0, 60.0],
        fees=0.25,
    )
    metrics = compute_metrics(run)
    assert metrics["turnover"] == pytest.approx(200.0 / 115.0)
    assert metrics["annual_turnover"] == pytest.approx(200.0 / 115.0 * 365 / 3)
    assert metrics["fees"] == 0.25
    assert metrics["trades"] == 3
    assert isinstance(metrics["trades"], int) and isinstance(metrics["days"], int)


# --- edge cases ---------------------------------------------------------------------------------


def test_an_empty_run_has_zero_return_and_undefined_ratios():
    run = make_run([], [], initial_cash=1_000.0)
    metrics = compute_metrics(run)
    assert metrics["arr"] == 0.0 and metrics["mdd"] == 0.0 and metrics["turnover"] == 0.0
    assert metrics["days"] == 0 and metrics["trades"] == 0
    assert metrics["final_equity"] == 1_000.0
    for key in ("drr", "sortino", "sharpe", "volatility", "calmar", "cagr", "annual_turnover"):
        assert math.isnan(metrics[key]), key
    assert daily_returns(run).empty


def test_a_single_close_is_only_the_anchor():
    metrics = compute_metrics(make_run([100.0], [DAY0]))
    assert metrics["days"] == 0 and metrics["arr"] == 0.0 and math.isnan(metrics["sharpe"])


def test_flat_equity_has_zero_risk_and_undefined_ratios():
    metrics = compute_metrics(daily_closes([100.0] * 10))
    assert metrics["arr"] == 0.0 and metrics["drr"] == 0.0 and metrics["cagr"] == 0.0
    assert metrics["volatility"] == 0.0 and metrics["mdd"] == 0.0
    assert math.isnan(metrics["sharpe"])
    assert math.isnan(metrics["sortino"])
    assert math.isnan(metrics["calmar"])


def test_one_day_has_no_standard_deviation_but_a_downside():
    metrics = compute_metrics(daily_closes([100.0, 95.0]))
    assert metrics["days"] == 1 and metrics["drr"] == pytest.approx(-0.05)
    assert math.isnan(metrics["sharpe"]) and math.isnan(metrics["volatility"])
    assert metrics["sortino"] == pytest.approx(-math.sqrt(365))


def test_no_losing_day_leaves_sortino_undefined_but_sharpe_defined():
    metrics = compute_metrics(daily_closes([100.0, 101.0, 103.0, 104.0]))
    assert math.isnan(metrics["sortino"])
    assert metrics["sharpe"] > 0 and math.isnan(metrics["calmar"])


def test_a_wiped_out_account_has_cagr_minus_one():
    metrics = compute_metrics(daily_closes([100.0, 50.0, 0.0]))
    assert metrics["arr"] == -1.0 and metrics["cagr"] == -1.0 and metrics["mdd"] == 1.0


# --- against an independent implementation ---------------------------------------------------


def reference_daily_returns(run: RunResult) -> pd.Series:
    """Daily returns by hand: last equity of each UTC day (a close ends its bar), previous day's
    close (or the start) as the base, calendar days without a close carried forward."""
    closes = [datetime.fromtimestamp(ms / 1000, tz=UTC) for ms in run.equity.index]
    values = run.equity.tolist()
    last: dict = {}
    for when, value in zip(closes, values, strict=True):
        last[(when - timedelta(milliseconds=1)).date()] = value
    first_day = (closes[0] - timedelta(milliseconds=1)).date()
    anchor_only = sum((c - timedelta(milliseconds=1)).date() == first_day for c in closes) == 1
    day, base, out = first_day, values[0], {}
    while day <= max(last):
        close = last.get(day, base)
        if not (anchor_only and day == first_day):
            out[pd.Timestamp(day, tz="UTC")] = close / base - 1.0
        base, day = close, day + timedelta(days=1)
    return pd.Series(out, dtype=float)


def bar_returns(run: RunResult) -> pd.Series:
    equity = run.equity.to_numpy()
    return pd.Series(equity[1:] / equity[:-1] - 1.0)


REFERENCE_RUNS = {
    "6h bars from a midnight close": lambda: random_walk(1, 4 * 90 + 1, DAY0, 6 * HOUR_MS),
    "hourly bars from mid-day, losing": lambda: random_walk(
        2, 24 * 40, DAY0 + 13 * HOUR_MS, HOUR_MS, drift=-0.001
    ),
    "15m bars, rising": lambda: random_walk(3, 96 * 20, DAY0 + HOUR_MS, HOUR_MS // 4, 0.0005),
    "daily bars": lambda: random_walk(4, 400, DAY0, DAY_MS, drift=0.002),
}


@pytest.fixture(params=list(REFERENCE_RUNS), ids=list(REFERENCE_RUNS))
def reference_run(request) -> RunResult:
    return REFERENCE_RUNS[request.param]()


def test_daily_returns_match_a_datetime_reference(reference_run):
    ours = daily_returns(reference_run)
    theirs = reference_daily_returns(reference_run)
    assert list(ours.index) == list(theirs.index)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-12)


def test_every_ratio_matches_empyrical(reference_run):
    metrics = compute_metrics(reference_run)
    daily = reference_daily_returns(reference_run)
    bars = bar_returns(reference_run)
    mdd = -ep.max_drawdown(bars)
    assert metrics["days"] == len(daily)
    assert metrics["arr"] == pytest.approx(ep.cum_returns_final(daily), rel=1e-9)
    assert metrics["arr"] == pytest.approx(ep.cum_returns_final(bars), rel=1e-9)
    assert metrics["drr"] == pytest.approx(float(np.mean(daily)), rel=1e-12)
    assert metrics["sortino"] == pytest.approx(ep.sortino_ratio(daily, annualization=365))
    assert metrics["sharpe"] == pytest.approx(ep.sharpe_ratio(daily, annualization=365))
    assert metrics["volatility"] == pytest.approx(ep.annual_volatility(daily, annualization=365))
    assert metrics["mdd"] == pytest.approx(mdd)
    assert metrics["cagr"] == pytest.approx(ep.annual_return(daily, annualization=365))
    assert metrics["calmar"] == pytest.approx(ep.annual_return(daily, annualization=365) / mdd)


def test_calmar_matches_empyrical_when_closes_are_daily():
    run = random_walk(5, 300, DAY0, DAY_MS, drift=0.001)
    daily = daily_returns(run)
    assert compute_metrics(run)["calmar"] == pytest.approx(
        ep.calmar_ratio(daily, annualization=365)
    )
    assert compute_metrics(run)["mdd"] == pytest.approx(-ep.max_drawdown(daily))
