"""The research statistics against values computed by hand or printed in the papers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from backtest import stats


def test_expected_max_sharpe_and_dsr_reproduce_the_deflated_sharpe_paper_example() -> None:
    """Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", section 4's example: 100
    trials whose annualised Sharpe ratios have variance 1/2, the best one 2.5 a year over five
    years of daily returns (T = 1250, 250 days a year), skewness -3, kurtosis 10 (raw).
    The paper prints SR0 = 0.1132 per day and DSR = 0.9004."""
    sr0 = stats.expected_max_sharpe(100, 0.5 / 250)
    # by hand: sqrt(0.002) * (0.4228 * Phi^-1(0.99) + 0.5772 * Phi^-1(1 - 1/(100 e)))
    #        = 0.044721 * (0.4228 * 2.32635 + 0.5772 * 2.68016) = 0.044721 * 2.5306 = 0.11317
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = stats.probabilistic_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_psr_wants_raw_kurtosis_and_excess_kurtosis_overstates_confidence() -> None:
    sr, n = 2.5 / math.sqrt(250), 1250
    raw = stats.probabilistic_sharpe_ratio(sr, 0.1132, n, -3.0, 10.0)
    excess = stats.probabilistic_sharpe_ratio(sr, 0.1132, n, -3.0, 7.0)  # the wrong input
    assert excess > raw


def test_psr_of_normal_returns_by_hand() -> None:
    # skew 0, raw kurtosis 3: z = SR sqrt(T-1) / sqrt(1 + SR^2 / 2) = 0.1 * 10 / sqrt(1.005)
    # = 0.997509; Phi(0.997509) = 0.840741
    assert stats.probabilistic_sharpe_ratio(0.1, 0.0, 101, 0.0, 3.0) == pytest.approx(
        0.840741, abs=1e-6
    )
    assert stats.probabilistic_sharpe_ratio(0.1, 0.1, 101, 0.0, 3.0) == pytest.approx(0.5)


def test_sharpe_moments_use_raw_kurtosis() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.0, 0.015])
    moments = stats.sharpe_moments(r)
    d = r - r.mean()  # by hand: biased central moments
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    assert moments.skew == pytest.approx(m3 / m2**1.5)
    assert moments.kurtosis == pytest.approx(m4 / m2**2)  # raw: ~3 for normal data
    assert moments.sharpe == pytest.approx(r.mean() / r.std(ddof=1))
    normal = stats.sharpe_moments(np.random.default_rng(0).normal(size=200_000))
    assert normal.kurtosis == pytest.approx(3.0, abs=0.05)


def test_a_single_trial_is_not_deflated() -> None:
    assert stats.expected_max_sharpe(1, 0.3) == 0.0
    with pytest.raises(ValueError):
        stats.expected_max_sharpe(0, 0.3)


def test_dsr_counts_trials_and_falls_as_they_grow() -> None:
    r = np.random.default_rng(1).normal(0.002, 0.02, 400)
    sharpes = [0.05, 0.1, 0.02, 0.08, 0.12]
    few = stats.deflated_sharpe_ratio(r, 5, sharpes)
    many = stats.deflated_sharpe_ratio(r, 500, sharpes)
    assert few["trials"] == 5 and many["trials"] == 500
    assert many["sr0"] > few["sr0"] > 0 and many["dsr"] < few["dsr"] < few["psr"]


def test_pbo_by_hand_with_two_trials_and_two_blocks() -> None:
    """Two blocks, two trials: trial 0 wins block A and loses block B, trial 1 the reverse.
    Both splits pick the in-sample winner, which ranks last (1 of 2) out of sample:
    w = 1 / 3, logit = ln(1/2) < 0, so PBO = 1. A trial winning both blocks gives PBO = 0."""
    good, flat = [0.02, 0.01], [0.01, -0.01]  # per-day Sharpe 2.12 and 0
    swapped = np.array([good + flat, flat + good]).T  # rows: days; columns: trials
    result = stats.probability_of_backtest_overfitting(swapped, blocks=2)
    assert result.pbo == 1.0 and result.splits == 2
    assert result.logits == pytest.approx([math.log(0.5), math.log(0.5)])
    dominant = np.array([good + good, flat + flat]).T
    result = stats.probability_of_backtest_overfitting(dominant, blocks=2)
    assert result.pbo == 0.0 and result.logits == pytest.approx([math.log(2.0)] * 2)


def test_pbo_of_pure_noise_is_about_a_half_and_of_a_real_edge_near_zero() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.01, (800, 8))
    assert 0.3 <= stats.probability_of_backtest_overfitting(noise, 8).pbo <= 0.7
    edge = noise.copy()
    edge[:, 0] += 0.004
    assert stats.probability_of_backtest_overfitting(edge, 8).pbo < 0.05
    assert stats.probability_of_backtest_overfitting(noise, 8).splits == math.comb(8, 4)


def test_pbo_of_all_splits_at_once_equals_the_split_by_split_metric() -> None:
    """The default per-day Sharpe is computed for every split from per-block sums; the same
    statistic given as a metric runs split by split: the same logits (identical and flat
    trials included: a tie and an undefined Sharpe)."""
    returns = np.random.default_rng(7).normal(0.001, 0.02, (130, 5))
    returns[:, 1] = returns[:, 0]
    returns[:, 4] = 0.0

    def sharpe(column: np.ndarray) -> float:
        std = float(column.std(ddof=1))
        return float(column.mean()) / std if std > 1e-12 else math.nan

    fast = stats.probability_of_backtest_overfitting(returns, 8)
    slow = stats.probability_of_backtest_overfitting(returns, 8, metric=sharpe)
    assert fast.splits == slow.splits == math.comb(8, 4)
    assert fast.logits == pytest.approx(slow.logits, abs=1e-12) and fast.pbo == slow.pbo


def test_pbo_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least two trials"):
        stats.probability_of_backtest_overfitting(np.zeros((100, 1)))
    with pytest.raises(ValueError, match="even"):
        stats.probability_of_backtest_overfitting(np.zeros((100, 3)), blocks=5)


def test_block_bootstrap_draws_contiguous_circular_blocks() -> None:
    index = stats.block_indices(10, 4, 50, np.random.default_rng(0))
    assert index.shape == (50, 10)
    for row in index:
        for block in (row[0:4], row[4:8]):
            assert all((b - a) % 10 == 1 for a, b in itertools.pairwise(block))


def test_one_block_of_the_whole_series_only_rotates_it_so_arr_is_exact() -> None:
    """With blocks as long as the series every resample is a rotation: the product of
    (1 + r) is the same, so the ARR interval collapses onto the estimate."""
    r = np.random.default_rng(2).normal(0.001, 0.03, 60)
    ci = stats.block_bootstrap_ci(r, stats.arr, block_days=60, resamples=200)
    assert ci.low == pytest.approx(ci.estimate) and ci.high == pytest.approx(ci.estimate)
    assert ci.estimate == pytest.approx(np.prod(1 + r) - 1)


def test_bootstrap_interval_covers_the_estimate_and_is_reproducible() -> None:
    r = np.random.default_rng(4).normal(0.001, 0.03, 300)
    a = stats.block_bootstrap_ci(r, stats.sharpe, seed=7)
    assert a.low < a.estimate < a.high
    assert a == stats.block_bootstrap_ci(r, stats.sharpe, seed=7)
    assert stats.sharpe(r) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365))


def test_paired_bootstrap_of_a_series_against_itself_is_exactly_zero() -> None:
    r = np.random.default_rng(5).normal(0.001, 0.03, 200)
    ci = stats.paired_bootstrap_ci(r, r, stats.sharpe)
    assert ci.estimate == ci.low == ci.high == 0.0
    better = stats.paired_bootstrap_ci(r + 0.01, r, stats.arr)
    assert better.low > 0
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_bootstrap_ci(r, r[:-1], stats.arr)
