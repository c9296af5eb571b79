"""The timing attribution (:mod:`backtest.timing`): the exposure/timing identity, the shift test
on planted foresight and on noise, the one-bar pairing of a decision with the next return, and
the trend filter's signal as the engine trades it; the walk-forward report's timing lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest import timing
from backtest.result import RunResult
from backtest.walkforward import Fold, PortfolioRuns, WalkForwardRuns, WalkForwardSpec
from backtest.wf_report import timing_attribution, timing_lines, timing_rows
from bot.events import GrossExposure, ModuleDecision, VariantWeights
from bot.timeframes import HOUR_MS, to_ms
from tests.unit.backtest.test_walkforward_parts import run_trend_filter

T0 = to_ms("2021-01-01")
STEP = 6 * HOUR_MS


def _closes(n: int, seed: int = 0, drift: float = 0.001) -> pd.Series:
    rng = np.random.default_rng(seed)
    prices = 100.0 * np.cumprod(1.0 + rng.normal(drift, 0.02, n))
    return pd.Series(prices, index=pd.Index(T0 + STEP * np.arange(1, n + 1)))


def test_exposure_and_timing_add_up_to_the_sleeves_mean_return() -> None:
    closes = _closes(400)
    returns = timing.next_bar_returns(closes, "6h")
    rng = np.random.default_rng(1)
    seeds = [pd.Series(rng.random(len(closes)), index=closes.index) for _ in range(3)]
    result = timing.sleeve_timing(seeds, returns, 1460.0, 28)
    known = returns.dropna()
    sleeves = [float((s.loc[known.index] * known).mean()) for s in seeds]
    assert result.decisions == len(known) == len(closes) - 1  # the last close has no next bar
    assert result.sleeve == pytest.approx(np.mean(sleeves) * 1460.0)
    assert result.held == pytest.approx(known.mean() * 1460.0)
    mean_weight = np.mean([s.loc[known.index].mean() for s in seeds])
    assert result.mean_weight == pytest.approx(mean_weight)
    assert result.exposure == pytest.approx(mean_weight * known.mean() * 1460.0)


def test_foresight_times_perfectly_and_its_opposite_never() -> None:
    closes = _closes(600)
    returns = timing.next_bar_returns(closes, "6h")
    foresight = (returns > 0).astype(float)
    shifts = len(returns.dropna()) - 2 * 28 + 1
    good = timing.sleeve_timing([foresight, foresight], returns, 1460.0, 28)
    assert good.timing > 0 and good.p_value == pytest.approx(1 / (1 + shifts))
    assert good.seeds_positive == 1.0
    bad = timing.sleeve_timing([1.0 - foresight], returns, 1460.0, 28)
    assert bad.timing < 0 and bad.p_value == 1.0 and bad.seeds_positive == 0.0
    assert bad.p_value_below == pytest.approx(1 / (1 + shifts)) and good.p_value_below == 1.0


def test_coin_flips_have_no_timing_to_speak_of() -> None:
    closes = _closes(2000, seed=3)
    returns = timing.next_bar_returns(closes, "6h")
    rng = np.random.default_rng(4)
    flips = [pd.Series(rng.integers(0, 2, len(closes)).astype(float), closes.index)]
    result = timing.sleeve_timing(flips, returns, 1460.0, 28)
    assert 0.05 < result.p_value < 0.95
    assert result.null_low < result.timing < result.null_high  # inside the shifts' middle 90%


def test_the_shift_null_is_every_circular_shift_of_the_weights() -> None:
    """The FFT's null equals shifting each seed's weights with np.roll, shift by shift."""
    rng = np.random.default_rng(5)
    weights = rng.random((2, 3, 90))
    returns = rng.normal(0.0, 0.01, (2, 90))
    observed = timing._summarise(weights, returns, 1.0, 10)
    centred = returns - returns.mean(axis=1, keepdims=True)
    null = [
        np.mean([(np.roll(weights[c], k, axis=1) @ centred[c]).mean() / 90 for c in range(2)])
        for k in range(10, 81)
    ]
    expected = (1 + sum(v >= observed.timing for v in null)) / (1 + len(null))
    assert observed.p_value == pytest.approx(expected)
    below = (1 + sum(v <= observed.timing for v in null)) / (1 + len(null))
    assert observed.p_value_below == pytest.approx(below)
    assert [observed.null_low, observed.null_high] == pytest.approx(np.quantile(null, [0.05, 0.95]))


def test_a_decision_is_paired_with_the_bar_after_it_only() -> None:
    """A move at or before the decision's close cannot be timed; the next bar's can. A gap in
    the bars leaves the decision before it out."""
    closes = pd.Series([100.0, 110.0, 99.0, 99.0], index=pd.Index(T0 + STEP * np.arange(4)))
    returns = timing.next_bar_returns(closes, "6h")
    assert returns.iloc[:3].tolist() == pytest.approx([0.1, -0.1, 0.0])
    assert np.isnan(returns.iloc[3])
    gapped = closes.drop(closes.index[2])
    assert np.isnan(timing.next_bar_returns(gapped, "6h").iloc[1])


def test_decision_weights_keep_one_coin_inside_the_span() -> None:
    decisions = [
        ModuleDecision(T0 + i * STEP, "m", coin, 1.0 - w, w)
        for i, (coin, w) in enumerate([("BTC", 1.0), ("ETH", 1.0), ("BTC", 0.5), ("BTC", 0.0)])
    ]
    weights = timing.decision_weights(decisions, "BTC", T0, T0 + 3 * STEP)
    assert weights.to_dict() == {T0: 1.0, T0 + 2 * STEP: 0.5}


async def test_the_trend_signal_is_what_the_trend_filter_baseline_trades() -> None:
    """The engine fills a decision at the next bar's open, so the position recorded at close
    t + 1 is the signal at close t."""
    closes = _closes(240, seed=6, drift=0.0)
    result = await run_trend_filter(closes.index - STEP, closes.to_numpy(), 5)
    held = (result.weights["BTC"] > 0.5).astype(float)
    signal = timing.trend_weights(closes, "6h", 5)
    recorded = held.loc[signal.index[1:]].to_numpy()
    assert recorded.tolist() == signal.iloc[:-1].tolist()
    assert 0.2 < signal.mean() < 0.8  # both states occur


def _runs(decisions: list[ModuleDecision], closes: pd.Series) -> WalkForwardRuns:
    index = closes.index
    run = RunResult(
        "p", "6h", "USDT", 100.0, pd.Series(100.0, index=index), pd.DataFrame(index=index),
        pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 0.0,
    )  # fmt: skip
    spec = WalkForwardSpec("cryptorlpm", 1, 1, 1, (1,), ("a",))
    fold = Fold(0, int(index[0]), int(index[-1]) + 1, (0, 1), (1, 2))
    portfolio = PortfolioRuns("a", ("BTC",), {1: run}, {1: decisions}, [])
    return WalkForwardRuns(spec, [fold], [portfolio], [], 0, 0.0, closes={"BTC": closes})


def test_the_report_attributes_each_coin_and_the_mean_sleeve() -> None:
    closes = _closes(300, seed=7)
    returns = timing.next_bar_returns(closes, "6h")
    decisions = [
        ModuleDecision(int(ts), "m", "BTC", 1.0 - w, w)
        for ts, w in zip(closes.index, (returns > 0).astype(float), strict=True)
    ]
    runs = _runs(decisions, closes)
    attribution = timing_attribution(runs, runs.portfolios[0])
    assert attribution is not None
    mine = attribution["coins"]["BTC"]["policy"]
    assert mine["timing"] > 0 and mine["p_value"] < 0.01
    assert attribution["portfolio"]["policy"]["timing"] == pytest.approx(mine["timing"])
    assert "trend_filter" in attribution["coins"]["BTC"]
    lines = timing_lines(attribution, "seed")
    assert lines[0].startswith("- timing, per year before costs") and "1/1 seeds > 0" in lines[0]
    assert lines[1].startswith("  - BTC held")
    assert timing_lines(None, "seed") == []
    old = _runs(decisions, closes)
    old.closes = {}  # a runs.pkl written before closes were kept
    assert timing_attribution(old, old.portfolios[0]) is None


def test_a_managers_gross_exposure_scales_the_decided_weights_from_its_close_on() -> None:
    weights = pd.Series([1.0, 1.0, 0.5, 1.0], index=T0 + STEP * np.arange(4))
    notes = [GrossExposure(T0 + STEP, 0.5, "m"), GrossExposure(T0 + 3 * STEP, 0.0, "m")]
    gross = timing.gross_exposure([*notes, ModuleDecision(T0, "x", "BTC", 0.0, 1.0)])
    assert timing.scaled_by(weights, gross).tolist() == [1.0, 0.5, 0.25, 0.0]
    assert timing.scaled_by(weights, timing.gross_exposure([])).equals(weights)  # no manager


def test_each_variants_positions_are_read_from_the_controllers_notes() -> None:
    notes = [
        VariantWeights(T0 + i * STEP, coin, (("cash", 0.5), ("hold", 0.5)),
                       (("cash", 0.0), ("hold", 1.0)), 0.5, "mars")
        for i, coin in enumerate(["BTC", "ETH", "BTC"])
    ]  # fmt: skip
    held = timing.variant_positions(notes, "BTC", T0, T0 + 10 * STEP)
    assert set(held) == {"cash", "hold"}
    assert held["hold"].to_dict() == {T0: 1.0, T0 + 2 * STEP: 1.0}


def test_positions_that_never_change_are_not_tested() -> None:
    closes = _closes(300)
    returns = timing.next_bar_returns(closes, "6h")
    always = pd.Series(1.0, index=closes.index)
    result = timing.sleeve_timing([always], returns, 1460.0, 28)
    assert result.p_value is None and result.p_value_below is None
    assert np.isnan(result.null_low) and np.isnan(result.null_high)
    assert result.timing == pytest.approx(0.0, abs=1e-12) and result.exposure == result.held


def test_positions_that_never_move_add_nothing_and_are_not_tested_alone() -> None:
    """Coin A always held, coin B never, or one seed always in and one always out: no test
    (rounding noise must not read as significant). Beside a moving row they add exactly 0,
    and the test is the moving row's."""
    closes = _closes(400, seed=8)
    returns = timing.next_bar_returns(closes, "6h")
    always, never = pd.Series(1.0, closes.index), pd.Series(0.0, closes.index)
    split = timing.portfolio_timing({"A": ([always], returns), "B": ([never], returns)}, 1.0, 28)
    assert split.p_value is None and split.timing == 0.0
    seeds = timing.sleeve_timing([always, never], returns, 1.0, 28)
    assert seeds.p_value is None and seeds.timing == 0.0
    rng = np.random.default_rng(9)
    moving = pd.Series(rng.random(len(closes)), closes.index)
    alone = timing.sleeve_timing([moving], returns, 1.0, 28)
    beside = timing.sleeve_timing([moving, always], returns, 1.0, 28)
    assert beside.p_value == alone.p_value and beside.timing == pytest.approx(alone.timing / 2)


def test_a_portfolio_uses_the_closes_every_coin_decided_and_skips_a_seed_missing_a_coin() -> None:
    closes = _closes(300, seed=10)
    returns = timing.next_bar_returns(closes, "6h")
    rng = np.random.default_rng(11)
    a = pd.Series(rng.random(300), closes.index)
    b = pd.Series(rng.random(200), closes.index[50:250])  # decided on fewer closes
    whole = timing.portfolio_timing({"A": ([a], returns), "B": ([b], returns)}, 1.0, 28)
    assert whole.decisions == 200 and whole.seeds == 1
    empty = pd.Series(dtype=float)  # seed 2 decided nothing for B: left out of A too
    two = timing.portfolio_timing({"A": ([a, a], returns), "B": ([b, empty], returns)}, 1.0, 28)
    assert two.seeds == 1 and two.timing == pytest.approx(whole.timing)
    nothing = timing.portfolio_timing({"A": ([empty], returns)}, 1.0, 28)
    assert nothing.decisions == 0 and nothing.p_value is None
    assert timing.portfolio_timing({}, 1.0, 28).decisions == 0


def test_the_report_scales_by_the_managers_exposure_and_tests_each_variant() -> None:
    """Two seeds of a MARS-like run on BTC and STORJ: the manager halves the exposure half way;
    seed 2 never noted the 'bold' variant for STORJ, so 'bold' is tested on seed 1 alone."""
    closes = {c: _closes(300, seed=s) for c, s in (("BTC", 12), ("STORJ", 13))}
    index = closes["BTC"].index
    rng = np.random.default_rng(14)
    decisions, notes = {}, {}
    for seed in (1, 2):
        decisions[seed], notes[seed] = [], []
        for coin in ("BTC", "STORJ"):
            for ts in index:
                careful, bold = float(rng.integers(0, 2)), float(rng.integers(0, 2))
                variants = (("careful", careful), ("bold", bold))
                if seed == 2 and coin == "STORJ":
                    variants = variants[:1]
                notes[seed].append(VariantWeights(int(ts), coin, (), variants, careful, "mars"))
                decisions[seed].append(ModuleDecision(int(ts), "m", coin, 1 - careful, careful))
        notes[seed] += [GrossExposure(int(index[0]), 1.0, "mars")]
        notes[seed] += [GrossExposure(int(index[150]), 0.5, "mars")]
    run = RunResult(
        "p", "6h", "USDT", 100.0, pd.Series(100.0, index=index), pd.DataFrame(index=index),
        pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 0.0,
    )  # fmt: skip
    portfolio = PortfolioRuns("b", ("BTC", "STORJ"), {1: run, 2: run}, decisions, [], regime=notes)
    spec = WalkForwardSpec("mars", 1, 1, 1, (1, 2), ("b",))
    fold = Fold(0, int(index[0]), int(index[-1]) + 1, (0, 1), (1, 2))
    runs = WalkForwardRuns(spec, [fold], [portfolio], [], 0, 0.0, closes=closes)
    attribution = timing_attribution(runs, portfolio)
    assert attribution is not None
    decided = [
        pd.Series({d.ts: d.coin_weight for d in decisions[s] if d.coin == "BTC"}) for s in (1, 2)
    ]
    halved = [w * np.where(np.arange(300) >= 150, 0.5, 1.0) for w in decided]
    expected = timing.sleeve_timing(
        halved, timing.next_bar_returns(closes["BTC"], "6h"), 1460.0, 28
    )
    assert attribution["coins"]["BTC"]["policy"]["mean_weight"] == pytest.approx(
        expected.mean_weight
    )
    assert attribution["coins"]["BTC"]["policy"]["timing"] == pytest.approx(expected.timing)
    assert attribution["variants"]["careful"]["seeds"] == 2
    assert attribution["variants"]["bold"]["seeds"] == 1
    assert "variant bold" in [label for label, _ in timing_rows("mars", attribution)]
    assert any("variants' own positions" in line for line in timing_lines(attribution, "seed"))
