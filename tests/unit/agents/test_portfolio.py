"""The portfolio vote w_t = sum(d_t^i) / m, and plugging modules at run time."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from bot.engine import Account, DecisionContext, Instant
from bot.events import Bar, Metric, ModuleDecision
from strategies.portfolio import PortfolioVote, vote


@dataclass
class ScriptedModule:
    """Stands in for a CryptoModule: decides a scripted coin weight at each of its bars."""

    coin: str
    model_id: str
    weights: list[float]
    metrics: list[Metric] = field(default_factory=list)

    positions: list[float | None] = field(default_factory=list)

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        if bar.symbol != f"{self.coin}/USDT":
            return None
        self.positions.append(position)
        w = self.weights.pop(0)
        return ModuleDecision(bar.ts, self.model_id, self.coin, 1.0 - w, w)

    def on_metric(self, metric: Metric) -> None:
        self.metrics.append(metric)


class Wired:
    """A vote stepped as the engine does: one context per instant; targets and notes kept."""

    def __init__(self) -> None:
        self.account = Account("USDT", 1_000.0)
        self.portfolio = PortfolioVote("USDT")
        self.targets: list[tuple[int, dict[str, float]]] = []
        self.decisions: list[ModuleDecision] = []

    def step(
        self, ts: int, coins: list[str], metrics: tuple[Metric, ...] = (), decide: bool = True
    ) -> dict[str, float] | None:
        bars = tuple(
            Bar(ts, "x", f"{c}/USDT", "6h", ts - 1, 1.0, 1.0, 1.0, 1.0, 1.0) for c in coins
        )
        context = DecisionContext(Instant(ts, metrics, bars, decide), self.account)
        answer = self.portfolio.decide(context)
        self.decisions += [n for n in context.notes if isinstance(n, ModuleDecision)]
        if answer is not None:
            self.targets.append((ts, dict(answer)))
        return None if answer is None else dict(answer)


@pytest.fixture
def wired() -> Wired:
    return Wired()


def test_vote_is_the_mean_of_the_weight_pairs():
    weights = dict(vote({"BTC": (0.0, 1.0), "ETH": (1.0, 0.0), "LINK": (0.0, 1.0)}, "USDT"))
    assert weights == pytest.approx({"USDT": 1 / 3, "BTC": 1 / 3, "ETH": 0.0, "LINK": 1 / 3})
    assert vote({}, "USDT") == (("USDT", 1.0),)


def test_target_weights_at_every_close_renormalised_on_unplug(wired: Wired) -> None:
    portfolio = wired.portfolio
    portfolio.plug(ScriptedModule("BTC", "btc-1", [1, 1, 1]))
    portfolio.plug(ScriptedModule("ETH", "eth-1", [0, 1, 1]))
    with pytest.raises(ValueError, match="already plugged"):
        portfolio.plug(ScriptedModule("BTC", "btc-2", []))
    assert wired.step(50, [], (Metric(50, "BTC", "m", 0, 1.0),), decide=False) is None
    assert len(portfolio.module("BTC").metrics) == len(portfolio.module("ETH").metrics) == 1
    assert wired.step(100, ["BTC", "ETH"]) == {"USDT": 0.5, "BTC": 0.5, "ETH": 0.0}
    assert [(d.coin, d.coin_weight) for d in wired.decisions] == [("BTC", 1.0), ("ETH", 0.0)]

    removed = portfolio.unplug("ETH")
    assert removed.model_id == "eth-1" and portfolio.coins == ("BTC",)
    assert wired.step(200, ["BTC", "ETH"]) == {"USDT": 0.0, "BTC": 1.0}  # ETH's bar is unread
    assert removed.weights == [1, 1]


def test_replace_swaps_the_module_of_a_coin_in_place(wired: Wired) -> None:
    portfolio = wired.portfolio
    portfolio.plug(ScriptedModule("BTC", "btc-1", [1, 1]))
    portfolio.plug(ScriptedModule("ETH", "eth-1", [1, 1]))
    wired.step(100, ["BTC", "ETH"])
    old = portfolio.replace(ScriptedModule("BTC", "btc-2", [0]))
    assert old.model_id == "btc-1" and portfolio.coins == ("BTC", "ETH")
    assert wired.step(200, ["BTC", "ETH"]) == {"USDT": 0.5, "BTC": 0.0, "ETH": 0.5}
    assert old.weights == [1]  # the old module saw no more bars
    with pytest.raises(KeyError, match="use plug"):
        portfolio.replace(ScriptedModule("SOL", "sol-1", []))


def test_a_module_without_a_decision_votes_cash_and_a_missed_bar_keeps_the_last(
    wired: Wired,
) -> None:
    portfolio = wired.portfolio
    assert wired.step(50, ["BTC"]) == {"USDT": 1.0}  # nothing plugged: all cash
    portfolio.plug(ScriptedModule("BTC", "b", [1, 1]))
    portfolio.plug(ScriptedModule("ETH", "e", [1]))
    assert wired.step(100, ["BTC"]) == {"USDT": 0.5, "BTC": 0.5, "ETH": 0.0}  # ETH: no bar yet
    # BTC's bar is missing (an outage): its last decision stands
    assert wired.step(200, ["ETH"]) == {"USDT": 0.0, "BTC": 0.5, "ETH": 0.5}


def test_each_module_reads_the_position_the_account_holds_not_its_last_action(
    wired: Wired,
) -> None:
    portfolio = wired.portfolio
    portfolio.plug(ScriptedModule("BTC", "b", [1, 1, 1]))
    portfolio.plug(ScriptedModule("ETH", "e", [1, 1, 1]))
    account = wired.account
    account.prices.update({"BTC": 1.0, "ETH": 1.0})
    wired.step(100, ["BTC", "ETH"])  # nothing held yet
    account.cash, account.holdings = 500.0, {"BTC": 500.0}  # ETH's buy was refused
    wired.step(200, ["BTC", "ETH"])
    account.cash, account.holdings = 760.0, {"BTC": 240.0}  # BTC only partly bought: 0.48 < 0.5
    wired.step(300, ["BTC", "ETH"])
    assert portfolio.module("BTC").positions == [0.0, 1.0, 0.0]
    assert portfolio.module("ETH").positions == [0.0, 0.0, 0.0]


def test_the_step_s_vote_and_positions_have_the_bits_of_the_vote_and_positions() -> None:
    rng = np.random.default_rng(4)
    coins = ["BTC", "ETH", "LINK", "STORJ", "BLZ", "SOL", "ADA"]
    for _ in range(300):
        m = int(rng.integers(1, 8))
        portfolio = PortfolioVote("USDT", [ScriptedModule(c, c, []) for c in coins[:m]])
        for coin in coins[:m]:
            if rng.random() < 0.8:  # the others have not decided yet
                w = float(rng.choice([0.0, 1.0, rng.random()]))
                portfolio._latest[coin] = ModuleDecision(1, coin, coin, 1.0 - w, w)
        pairs = {  # each module's (cash, coin) pair; all cash before its first decision
            c: (d.cash, d.coin_weight) if (d := portfolio.latest(c)) else (1.0, 0.0)
            for c in portfolio.coins
        }
        assert portfolio.vote_weights() == dict(vote(pairs, "USDT"))
        assert list(portfolio.vote_weights()) == list(dict(vote(pairs, "USDT")))  # same order
        assert portfolio.weights() == vote(pairs, "USDT")
        account = Account("USDT", float(rng.random() * 1_000))
        held = [c for c in [*coins, "BNB"] if rng.random() < 0.5]
        account.holdings = {c: float(rng.random() * 3) for c in held}
        account.prices = {c: float(rng.random() * 100) for c in held if rng.random() < 0.9}
        positions = portfolio.positions(account.weights())
        assert {c: positions[c] for c in portfolio.coins} == {
            c: portfolio.held_positions(account).get(c, 0.0) for c in portfolio.coins
        }


@dataclass
class SelectiveModule(ScriptedModule):
    """A module that says which bars and metrics it reads (as a CryptoModule does)."""

    metric_keys: frozenset[tuple[str, str]] = frozenset()

    @property
    def symbol(self) -> str:
        return f"{self.coin}/USDT"

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        assert bar.symbol == self.symbol, "handed a bar it does not read"
        return super().decide(bar, position)


def test_modules_are_handed_only_the_bars_and_metrics_they_read(wired: Wired) -> None:
    portfolio = wired.portfolio
    btc = SelectiveModule("BTC", "b", [1, 0], metric_keys=frozenset({("BTC", "m")}))
    portfolio.plug(btc)
    portfolio.plug(ScriptedModule("ETH", "e", [1, 1]))  # says nothing: reads everything
    metrics = (Metric(50, "BTC", "m", 0, 1.0), Metric(50, "ETH", "x", 0, 2.0))
    assert wired.step(100, ["BTC", "ETH"], metrics) == {"USDT": 0.0, "BTC": 0.5, "ETH": 0.5}
    assert btc.metrics == [metrics[0]] and portfolio.module("ETH").metrics == list(metrics)
    portfolio.replace(SelectiveModule("BTC", "b2", [0], metric_keys=frozenset({("ETH", "x")})))
    wired.step(200, ["BTC", "ETH"], metrics)  # the routes follow the swap
    assert portfolio.module("BTC").metrics == [metrics[1]]
    assert [(d.coin, d.coin_weight) for d in wired.decisions] == [
        ("BTC", 1.0),
        ("ETH", 1.0),
        ("BTC", 0.0),
        ("ETH", 1.0),
    ]


class PreparingModule:
    """A module with ``prepare``: records what it was handed, on which thread."""

    def __init__(self, coin: str, *, fail: bool = False) -> None:
        self.coin, self.model_id, self.symbol = coin, f"m-{coin}", f"{coin}/USDT"
        self.metric_keys = {(coin, "flow")}
        self.fresh, self.fail = True, fail
        self.handed: tuple[list[int], list[str]] | None = None
        self.thread = ""

    def prepare(
        self, timeframe: str, open_time: np.ndarray, ohlcv: np.ndarray, metrics: pd.DataFrame
    ) -> bool:
        if self.fail:
            raise RuntimeError(f"{self.coin} could not prepare")
        self.thread = threading.current_thread().name
        self.handed = (open_time.tolist(), metrics["asset"].tolist())
        self.fresh = False
        return True

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        return None

    def on_metric(self, metric: Metric) -> None: ...


class CountingReplay:
    """What ``PortfolioVote.prepare`` reads of a replay, counting the metric reads."""

    timeframe = "6h"

    def __init__(self, coins: list[str]) -> None:
        self.coins, self.metric_reads = coins, 0

    def replayed_bars(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        index = self.coins.index(symbol.split("/")[0])
        return np.array([index * 10, index * 10 + 1], dtype=np.int64), np.ones((2, 5))

    def replayed_metrics(self) -> pd.DataFrame:
        self.metric_reads += 1
        return pd.DataFrame(
            {
                "known_at": [1, 2, 3],
                "asset": [*self.coins[:2], "other"],
                "name": ["flow", "flow", "flow"],
                "observed_at": [0, 1, 2],
                "value": [1.0, 2.0, 3.0],
            }
        )


def test_modules_prepare_side_by_side_each_with_its_own_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("strategies.plans.usable_cpus", lambda: 2)
    coins = ["BTC", "ETH", "SOL"]
    modules = [PreparingModule(c) for c in coins]
    portfolio = PortfolioVote("USDT", modules)  # type: ignore[arg-type]
    replay = CountingReplay(coins)
    assert portfolio.prepare(replay) == 3
    assert [m.handed for m in modules] == [([0, 1], ["BTC"]), ([10, 11], ["ETH"]), ([20, 21], [])]
    assert all(m.thread.startswith("prepare") for m in modules)  # a pool, not the caller
    # Once every module has read its plan, a second prepare reads nothing of the replay.
    assert portfolio.prepare(replay) == 0 and replay.metric_reads == 1


def test_a_module_that_fails_to_prepare_fails_the_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("strategies.plans.usable_cpus", lambda: 2)
    modules = [PreparingModule("BTC"), PreparingModule("ETH", fail=True)]
    portfolio = PortfolioVote("USDT", modules)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="ETH could not prepare"):
        portfolio.prepare(CountingReplay(["BTC", "ETH"]))
