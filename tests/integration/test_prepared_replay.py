"""A replay whose Crypto Modules prepared their decisions in batched passes decides exactly as
the same replay bar by bar: module decisions, signals, readiness, targets, trades and equity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from backtest.policies import FoldSpan, FoldSwitchingVote
from backtest.replay import ReplayDriver
from backtest.result import RunResult
from backtest.run import run_backtest
from bot.engine.step import DecisionContext, Policy
from bot.events import ModuleDecision
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.timeframes import DAY_MS, to_ms
from config.schema import (
    AppConfig,
    DataConfig,
    DateWindow,
    FeatureConfig,
    MarketConfig,
    WindowsConfig,
)
from strategies.agents.train import Windows, refine_history, train_cm
from strategies.crypto_module import CryptoModule
from strategies.features import with_known_at
from strategies.portfolio import PortfolioVote
from strategies.registry import save_crypto_module
from strategies.seed_bag import SeedBag
from tests.unit.agents.conftest import COST, TINY, jolted

COINS = ("BTC", "ETH")
WINDOWS = WindowsConfig(
    train=DateWindow(start=date(2021, 1, 1), end=date(2021, 6, 30)),
    validation=DateWindow(start=date(2021, 7, 1), end=date(2021, 8, 31)),
    test=DateWindow(start=date(2021, 9, 1), end=date(2021, 10, 31)),
)
REPLAY_FROM = to_ms("2021-05-01")  # the replay's first bar: its modules warm up from here
DECIDE_FROM = to_ms("2021-08-01")


@pytest.fixture(scope="module")
def market():
    return generate_market(
        list(COINS), to_ms("2020-07-01"), to_ms("2021-11-01"), seed=5, scenarios=()
    )


@pytest.fixture(scope="module")
def bars(market) -> dict[str, pd.DataFrame]:
    return {c: resample_candles(market.candles[c], "1h", "6h").frame for c in COINS}


@pytest.fixture(scope="module")
def folders(market, bars, tmp_path_factory) -> dict[str, Path]:
    """A tiny trained module per coin (two seeds for BTC: a swap needs another model)."""
    root = tmp_path_factory.mktemp("models")
    windows = Windows.from_config(WINDOWS)
    out = {}
    for coin, seed in (("BTC", 1), ("ETH", 2), ("BTC-b", 3)):
        history = refine_history(
            coin[:3],
            bars[coin[:3]],
            market.metrics,
            "6h",
            FeatureConfig(),
            windows.train,
            market_wide_assets=["MARKET"],
        )
        out[coin] = save_crypto_module(root, train_cm(history, windows, TINY, seed=seed, cost=COST))
    return out


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> AppConfig:
    root = tmp_path_factory.mktemp("cfg")
    return AppConfig(
        data=DataConfig(dir=root),
        market=MarketConfig(coins=COINS, timeframe="6h", start="2020-07-01", end="2021-10-31"),
        windows=WINDOWS,
    )


@pytest.fixture(scope="module")
def driver(market, bars) -> ReplayDriver:
    frames = {
        f"{c}/USDT": frame[frame["open_time"] >= REPLAY_FROM].reset_index(drop=True)
        for c, frame in bars.items()
    }
    metrics = with_known_at(market.metrics, 3_600_000)
    metrics = metrics[metrics["known_at"] >= REPLAY_FROM]
    return ReplayDriver(
        frames, exchange="synthetic", timeframe="6h", metrics=metrics, start_ms=DECIDE_FROM
    )


class Watched:
    """A policy seen from outside: its answers, the module decisions it notes, and each
    module's signal, readiness and position after every instant. ``prepare`` is offered only
    when ``batched``; ``hook(ts)`` runs before each instant (a hot swap)."""

    def __init__(
        self,
        policy: Policy,
        modules: Callable[[], Mapping[str, CryptoModule]],
        *,
        batched: bool,
        hook: Callable[[int], None] | None = None,
    ) -> None:
        self.policy, self.modules, self.hook = policy, modules, hook
        self.name = policy.name
        self.answers: list[tuple[int, dict[str, float] | None]] = []
        self.decisions: list[ModuleDecision] = []
        self.states: list[tuple[int, str, str, int, bool, float]] = []
        if batched:
            self.prepare = self._prepare
        self.prepared = 0

    def _prepare(self, driver: ReplayDriver) -> None:
        self.prepared = self.policy.prepare(driver)  # type: ignore[attr-defined]

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        if self.hook is not None:
            self.hook(context.ts)
        answer = self.policy.decide(context)
        self.answers.append((context.ts, None if answer is None else dict(answer)))
        self.decisions += [n for n in context.notes if isinstance(n, ModuleDecision)]
        for coin, module in self.modules().items():
            self.states.append(
                (context.ts, coin, module.model_id, module.signal, module.ready, module.position)
            )
        return answer


JOLT = {"BTC": 4, "ETH": 1, "BTC-b": 3}
"""Seeds of the weights that make each tiny module trade (see ``jolted``)."""


def load(folders: Mapping[str, Path], coins=COINS) -> list[CryptoModule]:
    return [jolted(CryptoModule.load(folders[c], f"{c[:3]}/USDT"), JOLT[c]) for c in coins]


def assert_same_run(a: RunResult, b: RunResult) -> None:
    pd.testing.assert_series_equal(a.equity, b.equity, check_exact=True)
    pd.testing.assert_frame_equal(a.trades, b.trades, check_exact=True)
    pd.testing.assert_frame_equal(a.weights, b.weights, check_exact=True)
    pd.testing.assert_frame_equal(a.refusals, b.refusals, check_exact=True)
    assert a.fees_paid == b.fees_paid


def assert_same_watch(a: Watched, b: Watched) -> None:
    assert a.decisions == b.decisions
    assert a.answers == b.answers
    assert a.states == b.states


async def replay(cfg, driver, make: Callable[[bool], Watched]) -> tuple[Watched, Watched]:
    """The same replay bar by bar, then with ``prepare``; both results checked equal."""
    slow, fast = make(False), make(True)
    slow_run = await run_backtest(cfg, slow, driver, name="bar-by-bar")
    fast_run = await run_backtest(cfg, fast, driver, name="prepared")
    assert_same_run(slow_run, fast_run)
    assert_same_watch(slow, fast)
    assert len(fast_run.trades) > 4, "a replay that never trades would show nothing"
    return slow, fast


async def test_prepared_vote_decides_as_the_vote_bar_by_bar(cfg, driver, folders) -> None:
    votes = {}

    def make(batched: bool) -> Watched:
        vote = votes[batched] = PortfolioVote("USDT", load(folders))
        return Watched(vote, lambda: {c: vote.module(c) for c in vote.coins}, batched=batched)

    _, fast = await replay(cfg, driver, make)
    assert fast.prepared == 2
    for coin in COINS:  # every decision came from the plan: no module had to catch up
        plan = votes[True].module(coin)._plan
        assert plan is not None and plan.cursor == len(plan.bars) > 0
    weights = {d.coin_weight for d in fast.decisions if d.ts >= DECIDE_FROM}
    assert weights == {0.0, 1.0}
    assert {s[3] for s in fast.states} >= {-1, 1}  # the EAM's signals vary too
    # The account's position, not the module's last action, is what the SAM read.
    own = PortfolioVote("USDT", load(folders))
    own.prepare(driver)
    mine = [d for i in driver.instants() for b in i.bars for d in own.on_bar(b)]
    assert [d.coin_weight for d in mine] != [d.coin_weight for d in fast.decisions]


async def test_a_module_swapped_in_mid_run_decides_bar_by_bar(cfg, driver, folders) -> None:
    swap_at = to_ms("2021-09-15")
    history = [(i.ts, e) for i in driver.instants() for e in (*i.metrics, *i.bars)]

    def make(batched: bool) -> Watched:
        vote = PortfolioVote("USDT", load(folders))
        swapped = []

        def hook(ts: int) -> None:
            if ts >= swap_at and not swapped:
                (module,) = load(folders, ("BTC-b",))
                module.warm_up(e for t, e in history if t < ts)
                vote.replace(module)
                swapped.append(module)

        return Watched(
            vote, lambda: {c: vote.module(c) for c in vote.coins}, batched=batched, hook=hook
        )

    _, fast = await replay(cfg, driver, make)
    assert len({s[2] for s in fast.states if s[1] == "BTC"}) == 2


async def test_prepared_fold_switching_vote_decides_as_bar_by_bar(cfg, driver, folders) -> None:
    middle = to_ms("2021-09-20")
    spans = (FoldSpan(0, DECIDE_FROM, middle), FoldSpan(1, middle, to_ms("2021-11-01")))

    def make(batched: bool) -> Watched:
        folds = [(spans[0], PortfolioVote("USDT", load(folders))), (spans[1], None)]
        folds[1] = (spans[1], PortfolioVote("USDT", load(folders, ("BTC-b", "ETH"))))
        policy = FoldSwitchingVote("USDT", folds, warmup_ms=40 * DAY_MS)

        def modules() -> dict[str, CryptoModule]:
            return {f"{c}{i}": v.module(c) for i, (_, v) in enumerate(folds) for c in v.coins}

        return Watched(policy, modules, batched=batched)

    _, fast = await replay(cfg, driver, make)
    assert fast.prepared == 4


async def test_a_seed_bag_holds_the_mean_of_its_members_own_positions(cfg, driver, folders) -> None:
    """BTC's bag holds two modules (two seeds), ETH's one: prepared or bar by bar the same,
    and each bag's weight is the mean of what its members decide alone, each reading its own
    last action."""

    def make(batched: bool) -> Watched:
        btc, eth, btc_b = load(folders, ("BTC", "ETH", "BTC-b"))
        vote = PortfolioVote("USDT", [SeedBag([btc, btc_b]), SeedBag([eth])])

        def members() -> dict[str, CryptoModule]:
            return {
                f"{c}{i}": member
                for c in vote.coins
                for i, member in enumerate(vote.module(c).members)  # type: ignore[attr-defined]
            }

        return Watched(vote, members, batched=batched)

    _, fast = await replay(cfg, driver, make)
    assert fast.prepared == 2
    alone = {}
    for key in ("BTC", "BTC-b", "ETH"):
        vote = PortfolioVote("USDT", load(folders, (key,)))
        vote.prepare(driver)
        alone[key] = [d for i in driver.instants() for b in i.bars for d in vote.on_bar(b)]
    btc = [d for d in fast.decisions if d.coin == "BTC"]
    pairs = zip(alone["BTC"], alone["BTC-b"], strict=True)
    assert [d.coin_weight for d in btc] == [(a.coin_weight + b.coin_weight) / 2 for a, b in pairs]
    ids = (alone["BTC"][0].module_id, alone["BTC-b"][0].module_id)
    assert {d.module_id for d in btc} == {"+".join(ids)}
    assert 0.5 in {d.coin_weight for d in btc}, "the two seeds never disagreed: nothing shown"
    eth = [d.coin_weight for d in fast.decisions if d.coin == "ETH"]
    assert eth == [d.coin_weight for d in alone["ETH"]]


async def test_prepared_fold_switching_vote_of_seed_bags_decides_as_bar_by_bar(
    cfg, driver, folders
) -> None:
    """The walk-forward's shape for ``--bag``: each fold's vote over seed bags, its members
    warming up before their fold."""
    middle = to_ms("2021-09-20")
    spans = (FoldSpan(0, DECIDE_FROM, middle), FoldSpan(1, middle, to_ms("2021-11-01")))

    def make(batched: bool) -> Watched:
        folds = []
        for span in spans:
            btc, eth, btc_b = load(folders, ("BTC", "ETH", "BTC-b"))
            folds.append((span, PortfolioVote("USDT", [SeedBag([btc, btc_b]), SeedBag([eth])])))
        policy = FoldSwitchingVote("USDT", folds, warmup_ms=40 * DAY_MS)

        def members() -> dict[str, CryptoModule]:
            return {
                f"{c}{i}{j}": member
                for i, (_, vote) in enumerate(folds)
                for c in vote.coins
                for j, member in enumerate(vote.module(c).members)  # type: ignore[attr-defined]
            }

        return Watched(policy, members, batched=batched)

    _, fast = await replay(cfg, driver, make)
    assert fast.prepared == 4
    assert 0.5 in {d.coin_weight for d in fast.decisions if d.coin == "BTC"}


def test_a_seed_bag_takes_modules_of_one_coin_only(folders) -> None:
    with pytest.raises(ValueError, match="share coin, symbol and timeframe"):
        SeedBag(load(folders, ("BTC", "ETH")))
    with pytest.raises(ValueError, match="at least one"):
        SeedBag([])
