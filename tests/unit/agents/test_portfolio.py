"""The portfolio vote w_t = sum(d_t^i) / m, and plugging modules at run time."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot.bus import EventBus
from bot.events import Bar, BarsClosed, Metric, ModuleDecision, TargetWeights
from strategies.portfolio import PortfolioVote, vote


@dataclass
class ScriptedModule:
    """Stands in for a CryptoModule: decides a scripted coin weight at each of its bars."""

    coin: str
    model_id: str
    weights: list[float]
    metrics: list[Metric] = field(default_factory=list)

    def decide(self, bar: Bar) -> ModuleDecision | None:
        if bar.symbol != f"{self.coin}/USDT":
            return None
        w = self.weights.pop(0)
        return ModuleDecision(bar.ts, self.model_id, self.coin, 1.0 - w, w)

    def on_metric(self, metric: Metric) -> None:
        self.metrics.append(metric)


def instant(bus: EventBus, ts: int, coins: list[str]) -> None:
    """What the replay driver queues for one close: the bars, then BarsClosed, one drain."""
    for coin in coins:
        bus.emit(Bar(ts, "x", f"{coin}/USDT", "6h", ts - 1, 1.0, 1.0, 1.0, 1.0, 1.0))
    bus.publish_sync(BarsClosed(ts, "6h", tuple(f"{c}/USDT" for c in coins)))


@pytest.fixture
def wired():
    bus = EventBus()
    targets: list[TargetWeights] = []
    decisions: list[ModuleDecision] = []
    bus.subscribe(TargetWeights, targets.append)
    bus.subscribe(ModuleDecision, decisions.append)
    portfolio = PortfolioVote("USDT")
    portfolio.attach(bus)
    return bus, portfolio, targets, decisions


def test_vote_is_the_mean_of_the_weight_pairs():
    weights = dict(vote({"BTC": (0.0, 1.0), "ETH": (1.0, 0.0), "LINK": (0.0, 1.0)}, "USDT"))
    assert weights == pytest.approx({"USDT": 1 / 3, "BTC": 1 / 3, "ETH": 0.0, "LINK": 1 / 3})
    assert vote({}, "USDT") == (("USDT", 1.0),)


def test_target_weights_at_every_close_renormalised_on_unplug(wired):
    bus, portfolio, targets, decisions = wired
    portfolio.plug(ScriptedModule("BTC", "btc-1", [1, 1, 1]))
    portfolio.plug(ScriptedModule("ETH", "eth-1", [0, 1, 1]))
    with pytest.raises(ValueError, match="already plugged"):
        portfolio.plug(ScriptedModule("BTC", "btc-2", []))
    bus.publish_sync(Metric(50, "BTC", "m", 0, 1.0))
    assert len(portfolio.module("BTC").metrics) == len(portfolio.module("ETH").metrics) == 1
    instant(bus, 100, ["BTC", "ETH"])
    assert targets[-1].as_dict() == {"USDT": 0.5, "BTC": 0.5, "ETH": 0.0}
    assert targets[-1].ts == 100 and targets[-1].source == "vote"
    assert [(d.coin, d.coin_weight) for d in decisions] == [("BTC", 1.0), ("ETH", 0.0)]

    removed = portfolio.unplug("ETH")
    assert removed.model_id == "eth-1" and portfolio.coins == ("BTC",)
    instant(bus, 200, ["BTC", "ETH"])  # ETH's bar reaches no module any more
    assert targets[-1].as_dict() == {"USDT": 0.0, "BTC": 1.0}
    assert removed.weights == [1, 1]


def test_replace_swaps_the_module_of_a_coin_in_place(wired):
    bus, portfolio, targets, _ = wired
    portfolio.plug(ScriptedModule("BTC", "btc-1", [1, 1]))
    portfolio.plug(ScriptedModule("ETH", "eth-1", [1, 1]))
    instant(bus, 100, ["BTC", "ETH"])
    old = portfolio.replace(ScriptedModule("BTC", "btc-2", [0]))
    assert old.model_id == "btc-1" and portfolio.coins == ("BTC", "ETH")
    instant(bus, 200, ["BTC", "ETH"])
    assert targets[-1].as_dict() == {"USDT": 0.5, "BTC": 0.0, "ETH": 0.5}
    assert old.weights == [1]  # the old module saw no more bars
    with pytest.raises(KeyError, match="use plug"):
        portfolio.replace(ScriptedModule("SOL", "sol-1", []))


def test_a_module_without_a_decision_votes_cash_and_a_missed_bar_keeps_the_last(wired):
    bus, portfolio, targets, _ = wired
    instant(bus, 50, ["BTC"])
    assert targets[-1].as_dict() == {"USDT": 1.0}  # nothing plugged: all cash
    portfolio.plug(ScriptedModule("BTC", "b", [1, 1]))
    portfolio.plug(ScriptedModule("ETH", "e", [1]))
    instant(bus, 100, ["BTC"])  # ETH has no bar yet: it votes cash
    assert targets[-1].as_dict() == {"USDT": 0.5, "BTC": 0.5, "ETH": 0.0}
    instant(bus, 200, ["ETH"])  # BTC's bar is missing (an outage): its last decision stands
    assert targets[-1].as_dict() == {"USDT": 0.0, "BTC": 0.5, "ETH": 0.5}
