"""The walk-forward's parts: the trend filter baseline, the policy registry, fold planning, run
slicing, the per-module diagnostics, the training fingerprint and the paired comparison of two
walk-forwards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest.diagnostics import degenerate_reason, module_diagnostics
from backtest.metrics import compute_metrics
from backtest.policies import (
    PolicyBuilder,
    PolicyContext,
    baseline_names,
    policy_builder,
    policy_names,
    register_policy,
)
from backtest.replay import ReplayDriver
from backtest.result import RunResult
from backtest.run import run_backtest
from backtest.walkforward import (
    Fold,
    PortfolioRuns,
    WalkForwardRuns,
    WalkForwardSpec,
    plan_folds,
    slice_run,
    training_digest,
)
from backtest.wf_compare import (
    ComparisonError,
    compare_walkforwards,
    comparison_markdown,
    read_walkforward,
)
from backtest.wf_report import seeds_line, validation_vs_test
from bot.engine import Account, DecisionContext, Instant
from bot.events import Bar, ModuleDecision
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from config.schema import AppConfig, BrokerConfig, MarketConfig, MarketRulesConfig
from strategies.agents.train import CoinHistory, Windows
from strategies.baselines import TrendFilter, baselines

T0 = to_ms("2021-01-01")


def bar(ts_index: int, close: float, symbol: str = "BTC/USDT") -> Bar:
    open_time = T0 + ts_index * DAY_MS
    return Bar(open_time + DAY_MS, "x", symbol, "1d", open_time, close, close, close, close, 1.0)


def test_trend_filter_holds_a_coin_only_above_its_mean_of_the_last_n_days() -> None:
    """BTC closes 1, 2, 3 (above its 3-day mean 2), then 1 (below its mean 2); ETH is flat."""
    trend = TrendFilter(["BTC", "ETH"], "1d", days=3)
    account = Account("USDT", 1.0)
    weights = []
    for i, close in enumerate([1.0, 2.0, 3.0, 1.0]):
        instant = Instant(T0 + (i + 1) * DAY_MS, (), (bar(i, close), bar(i, 5.0, "ETH/USDT")))
        weights.append(trend.decide(DecisionContext(instant, account)))
    assert weights[0] == {}  # one close: no full window yet (all cash)
    assert weights[1] == {}
    assert weights[2] == {"BTC": 0.5}  # 3 > mean(1, 2, 3); flat ETH is not above
    assert weights[3] == {}  # 1 < mean(2, 3, 1)
    assert trend.name == "trend_filter"


async def run_trend_filter(
    open_time: Sequence[int], closes: Sequence[float], days: int
) -> RunResult:
    """The trend filter over one coin's 6h bars (flat candles at ``closes``) through the engine."""
    frame = pd.DataFrame(
        {
            "open_time": open_time,
            "open": closes,
            "high": closes,
            "low": closes,
            "close": closes,
            "volume": 1.0,
        }
    )
    cfg = AppConfig(
        market=MarketConfig(coins=("BTC",), timeframe="6h"),
        broker=BrokerConfig(
            initial_cash=1000.0,
            default_rules=MarketRulesConfig(step_size=0.0001, tick_size=0.01, min_notional=1.0),
        ),
    )
    driver = ReplayDriver({"BTC/USDT": frame}, exchange="x", timeframe="6h")
    return await run_backtest(cfg, TrendFilter(["BTC"], "6h", days), driver, name="t")


async def test_trend_filter_runs_through_the_engine_and_joins_the_baselines() -> None:
    closes = [100.0] * 30 + [100.0 + i for i in range(1, 31)] + [130.0 - 2 * i for i in range(30)]
    result = await run_trend_filter([T0 + i * 6 * HOUR_MS for i in range(len(closes))], closes, 2)
    held = result.weights["BTC"].to_numpy()
    assert held[:30].max() == 0.0  # flat: never strictly above its mean
    assert held[40:60].min() > 0.9  # the rise is held
    assert held[-10:].max() == 0.0  # the fall is sold
    names = [p.name for p in baselines(["BTC", "ETH"], "6h", 20)]
    assert names == ["bh_BTC", "bh_ETH", "equal_weight", "equal_weight_bh", "trend_filter"]
    assert baseline_names(["BTC", "ETH"]) == names


def test_policies_are_names_in_a_registry_of_builders() -> None:
    assert {
        "cryptorlpm", "mars", "mars+manager", "equal_weight", "equal_weight_bh", "trend_filter"
    } <= set(policy_names())  # fmt: skip
    assert policy_builder("cryptorlpm").trains and not policy_builder("trend_filter").trains
    assert policy_builder("mars").trainer == "mars" == policy_builder("mars+manager").trainer
    cfg = AppConfig(market=MarketConfig(coins=("BTC",)))
    assert policy_builder("bh_BTC").build(PolicyContext(cfg, ("BTC",))).name == "bh_BTC"
    with pytest.raises(ValueError, match="unknown policy 'marz'"):
        policy_builder("marz")
    register_policy(PolicyBuilder("test_only_cash", False, lambda ctx: None, "for this test"))
    assert policy_builder("test_only_cash").description == "for this test"
    with pytest.raises(ValueError, match="already registered"):
        register_policy(PolicyBuilder("test_only_cash", False, lambda ctx: None))


def test_folds_roll_every_n_days_with_train_and_validation_before_each_refit() -> None:
    folds = plan_folds(to_ms("2021-01-01"), to_ms("2021-07-15"), 90, 120, 30)
    assert [f.label for f in folds] == [
        "2021-01-01..2021-04-01",
        "2021-04-01..2021-06-30",
        "2021-06-30..2021-07-15",
    ]
    first = folds[0]
    assert first.validation == (to_ms("2020-12-02"), to_ms("2021-01-01"))
    assert first.train == (to_ms("2020-08-04"), to_ms("2020-12-02"))
    assert all(f.validation[1] == f.start_ms for f in folds)  # nothing after the refit


def _run(equity: list[float], trades: list[dict]) -> RunResult:
    index = pd.Index([T0 + i * DAY_MS for i in range(len(equity))])
    frame = pd.DataFrame(
        trades,
        columns=[
            "ts", "client_order_id", "symbol", "side", "amount", "price", "fee", "fee_asset",
            "notional",
        ],
    )  # fmt: skip
    return RunResult(
        "p", "1d", "USDT", equity[0], pd.Series(equity, index=index, dtype=float),
        pd.DataFrame(index=index), frame, pd.DataFrame(), pd.DataFrame(), 0.0,
    )  # fmt: skip


def test_a_fold_slice_starts_from_the_equity_at_the_refit() -> None:
    run = _run([100, 110, 121, 100, 90], [])
    cut = slice_run(run, T0 + 2 * DAY_MS, T0 + 4 * DAY_MS)
    assert cut.equity.tolist() == [121, 100, 90] and cut.initial_cash == 121


def test_module_diagnostics_count_time_in_coin_flips_turnover_and_flag_degenerates() -> None:
    held = [0, 1, 1, 0, 1, 1, 1, 0]
    decisions = [
        ModuleDecision(T0 + i * DAY_MS, "m", "BTC", 1.0 - h, float(h)) for i, h in enumerate(held)
    ]
    decisions += [ModuleDecision(T0 + i * DAY_MS, "n", "ETH", 1.0, 0.0) for i in range(8)]
    trades = [
        {"ts": T0, "client_order_id": "a", "symbol": "BTC/USDT", "side": "buy", "amount": 1.0,
         "price": 50.0, "fee": 0.05, "fee_asset": "USDT", "notional": 50.0},
        {"ts": T0, "client_order_id": "b", "symbol": "BTC/USDT", "side": "sell", "amount": 1.0,
         "price": 50.0, "fee": 0.001, "fee_asset": "BTC", "notional": 50.0},
    ]  # fmt: skip
    run = _run([100.0] * 8, trades)
    out = module_diagnostics(decisions, run, untrained={"BTC": True})
    btc, eth = out["BTC"], out["ETH"]
    assert btc["coin_share"] == 5 / 8 and btc["flips"] == 4
    assert btc["flips_per_month"] == pytest.approx(4 * 30 / 7)
    assert btc["turnover"] == pytest.approx(1.0)  # 100 traded over a mean equity of 100
    assert btc["fees_share"] == pytest.approx((0.05 + 0.001 * 50) / 100)
    assert btc["degenerate"] == "untrained checkpoint"
    assert eth["degenerate"] == "never trades" and eth["turnover"] == 0.0
    assert degenerate_reason(1.0, False) == "always in" and degenerate_reason(0.5, False) is None


def test_a_module_holding_a_fraction_of_its_sleeve_is_not_flagged_as_idle() -> None:
    """A seed bag of three holding one third (or a MARS blend) trades; it is not "never
    trades" nor "always in", though it holds under half of its sleeve."""
    weights = [1 / 3, 1 / 3, 0.0, 1 / 3, 1.0, 1.0]
    decisions = [
        ModuleDecision(T0 + i * DAY_MS, "m", "BTC", 1.0 - w, w) for i, w in enumerate(weights)
    ]
    btc = module_diagnostics(decisions, _run([100.0] * 6, []))["BTC"]
    assert btc["coin_share"] == 2 / 6 and btc["flips"] == 1  # more than half held: 2 bars
    assert btc["degenerate"] is None
    third = [ModuleDecision(T0 + i * DAY_MS, "m", "BTC", 2 / 3, 1 / 3) for i in range(4)]
    assert module_diagnostics(third, _run([100.0] * 4, []))["BTC"]["degenerate"] is None


def test_a_mars_training_fingerprint_leaves_out_what_replays_fit() -> None:
    """The controller and the manager are fitted in replays: changing them (e.g. the controller's
    ablation) reuses the trained ensembles; a training setting trains again."""
    history = CoinHistory(
        coin="BTC",
        timeframe="6h",
        open_time=np.arange(4, dtype=np.int64) * 6 * HOUR_MS,
        ohlcv=np.ones((4, 5)),
        features=np.zeros((4, 1)),
        ready=np.ones(4, dtype=bool),
        feature_names=("f0",),
    )
    windows = Windows((0, 2 * 6 * HOUR_MS), (2 * 6 * HOUR_MS, 4 * 6 * HOUR_MS))
    base = AppConfig(market=MarketConfig(coins=("BTC",)))

    def digest(cfg: AppConfig) -> str:
        return training_digest(cfg, "mars", history, windows, [1, 2])

    def with_mars(**update: object) -> AppConfig:
        return base.model_copy(update={"mars": base.mars.model_copy(update=update)})

    ablation = base.mars.controller.model_copy(update={"fit": False, "risk_aversion": 1.0})
    manager = base.mars.manager.model_copy(update={"floor": 0.3})
    assert digest(with_mars(controller=ablation, manager=manager)) == digest(base)
    assert digest(with_mars(drawdown=0.2)) != digest(base)
    assert training_digest(base, "cm", history, windows, [1, 2]) != digest(base)


def _walkforward(
    policy: str,
    seeds: dict[int, list[float]],
    folds: int = 2,
    bag: int = 1,
    spec_seeds: tuple[int, ...] | None = None,
) -> WalkForwardRuns:
    """Runs keyed by ``seeds``'s keys (a bag run: its bags' first seeds, ``spec_seeds`` all)."""
    spec = WalkForwardSpec(policy, 1, 1, 1, spec_seeds or tuple(seeds), ("a",), bag=bag)
    spans = [
        Fold(i, T0 + 2 * i * DAY_MS, T0 + 2 * (i + 1) * DAY_MS, (0, 1), (1, 2))
        for i in range(folds)
    ]
    portfolio = PortfolioRuns("a", ("BTC",), {s: _run(e, []) for s, e in seeds.items()}, {}, [])
    return WalkForwardRuns(spec, spans, [portfolio], [], 0, 0.0)


def test_two_walkforwards_pair_seed_by_seed() -> None:
    first = _walkforward("mars", {1: [100, 110, 99, 120, 130], 2: [100, 90, 95, 100, 105]})
    second = _walkforward("mars", {1: [100, 105, 100, 110, 115], 2: [100, 100, 100, 100, 120]})
    document = compare_walkforwards(first, second, ("fitted", "uniform"))
    pair = document["portfolios"]["a"]
    assert pair["seeds"] == [1, 2]
    assert pair["paired"]["arr"] == pytest.approx([0.30 - 0.15, 0.05 - 0.20])
    assert pair["favour_first"]["arr"] == 1
    mdd = pair["paired"]["mdd"]  # seed 1: 10% against 100/105 - 1; seed 2: 10% against 0
    assert mdd == pytest.approx([0.1 - (1 - 100 / 105), 0.1])
    assert pair["favour_first"]["mdd"] == 0
    assert pair["runs"]["fitted"]["median_seed"] == 2  # the lower middle ARR of two
    assert "| fitted | 2 |" in comparison_markdown(document)


def test_walkforwards_over_other_seeds_or_folds_are_not_paired() -> None:
    base = _walkforward("mars", {1: [100, 110, 120, 130, 140]})
    with pytest.raises(ComparisonError, match=r"different seeds: \[1\] against \[2\]"):
        compare_walkforwards(base, _walkforward("mars", {2: [100, 110, 120, 130, 140]}))
    with pytest.raises(ComparisonError, match="different folds"):
        compare_walkforwards(base, _walkforward("mars", {1: [100, 110, 120, 130, 140]}, folds=1))
    bags = {1: [100, 110, 120, 130, 140]}  # bag 1 holds seeds 1 and 2: not seed 1's run alone
    two_bags = _walkforward("cryptorlpm", bags, bag=2, spec_seeds=(1, 2))
    with pytest.raises(ComparisonError, match=r"different seeds: \[1\] against \[1, 2\]"):
        compare_walkforwards(base, two_bags)
    three_bags = _walkforward("cryptorlpm", bags, bag=3, spec_seeds=(1, 2, 3))
    with pytest.raises(ComparisonError, match="seed bags of 2 against 3"):
        compare_walkforwards(two_bags, three_bags)
    document = compare_walkforwards(two_bags, two_bags)
    assert "Each run is a seed bag of 2 seeds" in comparison_markdown(document)


def test_a_bag_pairs_with_the_median_of_its_own_seeds_run_alone() -> None:
    """Bags {1, 2} and {3, 4} against seeds 1-4 alone: each bag's ARR minus the median of its
    two seeds' ARRs."""
    bags = {1: [100, 100, 100, 100, 130], 3: [100, 100, 100, 100, 110]}
    bagged = _walkforward("cryptorlpm", bags, bag=2, spec_seeds=(1, 2, 3, 4))
    alone = {s: [100, 100, 100, 100, 100 + g] for s, g in ((1, 10), (2, 20), (3, 0), (4, 40))}
    single = _walkforward("cryptorlpm", alone)
    document = compare_walkforwards(bagged, single, ("bags", "seeds"))
    pair = document["portfolios"]["a"]
    assert pair["seeds"] == [1, 3]
    arr = {s: compute_metrics(single.portfolios[0].policy[s])["arr"] for s in alone}
    own = {s: compute_metrics(bagged.portfolios[0].policy[s])["arr"] for s in (1, 3)}
    assert pair["paired"]["arr"] == pytest.approx(
        [own[1] - (arr[1] + arr[2]) / 2, own[3] - (arr[3] + arr[4]) / 2]
    )
    assert "bags's runs are seed bags of 2 seeds" in comparison_markdown(document)
    other = _walkforward("cryptorlpm", {s: alone[s] for s in (1, 2)})
    with pytest.raises(ComparisonError, match="a bag pairs with its own seeds run alone"):
        compare_walkforwards(bagged, other)


def test_a_folder_without_readable_runs_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ComparisonError, match=r"no runs\.pkl"):
        read_walkforward(tmp_path)
    (tmp_path / "runs.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ComparisonError, match="not readable as a walk-forward's runs"):
        read_walkforward(tmp_path)


def test_the_seeds_line_shows_each_seed_and_the_spread_of_their_arr() -> None:
    seeds = [
        {"seed": 1, "arr": 0.631, "mdd": 0.688},
        {"seed": 2, "arr": -0.259, "mdd": 0.678},
        {"seed": 3, "arr": float("nan"), "mdd": float("nan")},  # a seed with no figure
    ]
    line = seeds_line("cryptorlpm", seeds)
    assert line.startswith("- cryptorlpm by seed, ARR: 1: +63.1% (MDD 68.8%), 2: -25.9%")
    assert "3: n/a (MDD n/a)" in line and "spread 89.0 points" in line
    assert seeds_line("mars", []) == "- mars: no seed ran"


def test_the_report_says_whether_validation_scores_ranked_the_test_folds() -> None:
    """Three seeds over two folds: the validation scores rank fold 0's test ARRs exactly and
    fold 1's in reverse (Spearman +1 and -1; the best-validating seed first, then last)."""
    runs = _walkforward("cryptorlpm", {s: [100, 100, 100, 100, 100] for s in (1, 2, 3)})
    runs.validation = {
        (f.index, "BTC", s): v for f in runs.folds for s, v in ((1, 0.1), (2, 0.2), (3, 0.3))
    }
    rows = [
        {"cryptorlpm_seeds": {"1": -0.1, "2": 0.0, "3": 0.2}},
        {"cryptorlpm_seeds": {"1": 0.5, "2": 0.1, "3": -0.3}},
    ]
    found = validation_vs_test(runs, runs.portfolios[0], rows)
    assert found is not None and found["seeds"] == 3
    assert found["spearman"] == pytest.approx([1.0, -1.0])
    assert found["best_validating_rank"] == [1, 3] and found["median"] == pytest.approx(0.0)
    runs.validation = {}  # a policy without Crypto Modules, or a runs.pkl from before
    assert validation_vs_test(runs, runs.portfolios[0], rows) is None
    two = _walkforward("cryptorlpm", {s: [100, 100, 100, 100, 100] for s in (1, 2)})
    two.validation = {(f.index, "BTC", s): 0.1 for f in two.folds for s in (1, 2)}
    assert validation_vs_test(two, two.portfolios[0], rows) is None  # 2 seeds rank nothing


def test_seed_bags_group_consecutive_seeds_and_only_the_vote_takes_them() -> None:
    spec = WalkForwardSpec("cryptorlpm", 90, 120, 30, seeds=(1, 2, 3, 4, 5, 6), bag=3)
    assert spec.units == ((1, 2, 3), (4, 5, 6))
    assert WalkForwardSpec("cryptorlpm", 90, 120, 30, seeds=(1, 2)).units == ((1,), (2,))
    with pytest.raises(ValueError, match="divide the 5 seeds"):
        WalkForwardSpec("cryptorlpm", 90, 120, 30, seeds=(1, 2, 3, 4, 5), bag=2)
    assert policy_builder("cryptorlpm").bags
    assert not policy_builder("mars").bags and not policy_builder("equal_weight").bags
