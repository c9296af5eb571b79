"""Guardrails of the risk gate, end to end through the engine: what the policy wanted, what the
gate allowed, the refusal it emitted and the orders that actually left for the executor."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from backtest.replay import ReplayDriver
from backtest.run import run_backtest
from bot.engine import DecisionContext, Engine, Instant
from bot.engine.rules import MarketRules
from bot.events import (
    Bar,
    Event,
    OrderFilled,
    RiskRefusal,
    SubmitOrder,
)
from bot.timeframes import DAY_MS, HOUR_MS
from config.schema import AppConfig, BrokerConfig, MarketConfig, MarketRulesConfig, RiskConfig

DAY0 = 1_700_000_000_000 // DAY_MS * DAY_MS  # 2023-11-14 00:00 UTC


class ScriptedPolicy:
    """Answers each decision with ``wants`` (set by the test), or no new target on None."""

    name = "script"

    def __init__(self) -> None:
        self.wants: dict[str, float] | None = None

    def decide(self, context: DecisionContext) -> dict[str, float] | None:
        return self.wants


class Harness:
    """An ``Engine`` stepped bar by bar; every order fills at once at its reference price, no
    fee (``fill=False``: none fills). Each ``step`` returns its orders and refusals."""

    def __init__(
        self,
        *,
        cash: float = 1_000.0,
        holdings: dict[str, float] | None = None,
        fill: bool = True,
        **risk: object,
    ) -> None:
        cfg = AppConfig(
            market=MarketConfig(coins=("BTC", "ETH"), timeframe="1h"),
            broker=BrokerConfig(
                fee_rate=0.0,
                slippage_bps=0.0,
                default_rules=MarketRulesConfig(step_size=0.01, tick_size=0.01, min_notional=5.0),
            ),
            risk=RiskConfig(**risk),
        )
        self.policy = ScriptedPolicy()
        self.fill = fill
        self.engine = Engine(cfg, self.policy, cash=cash, holdings=holdings)
        self.log: list[Event] = []
        self.engine.bus.subscribe(Event, self.log.append)
        self.orders: list[SubmitOrder] = []
        self.refusals: list[RiskRefusal] = []

    def step(
        self, ts: int, prices: dict[str, float], wants: dict[str, float] | None = None
    ) -> tuple[list[SubmitOrder], list[RiskRefusal]]:
        """Step a close at ``ts``: a 1h bar per coin of ``prices``; fill what it orders."""
        self.policy.wants = wants
        bars = tuple(
            Bar(ts, "x", f"{coin}/USDT", "1h", ts - HOUR_MS, price, price, price, price, 1)
            for coin, price in sorted(prices.items())
        )
        result = self.engine.step(Instant(ts, (), bars))
        for order in result.orders if self.fill else ():
            self.engine.book(
                OrderFilled(
                    order.ts,
                    order.client_order_id,
                    order.symbol,
                    order.side,
                    order.amount,
                    order.reference_price,
                    0.0,
                    "USDT",
                )
            )
        self.orders += result.orders
        self.refusals += result.refusals
        return list(result.orders), list(result.refusals)


def sides(orders: list[SubmitOrder]) -> list[tuple[str, str, float]]:
    return [(o.symbol, o.side, o.amount) for o in orders]


def pinned(refusal: RiskRefusal) -> tuple[str, str, float, float]:
    return (refusal.rule, refusal.asset, round(refusal.wanted, 6), round(refusal.allowed, 6))


async def test_the_close_that_trips_the_kill_switch_decides_nothing_observers_see_it_in_order() -> (
    None
):
    h = Harness(max_drawdown=0.2, cash=0.0, holdings={"BTC": 10.0})
    h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, None)  # the peak: 1 000
    orders, refusals = h.step(DAY0 + 2 * HOUR_MS, {"BTC": 79.0}, {"BTC": 0.5, "USDT": 0.5})
    # The valuation of this close trips the switch before the policy's target is reviewed.
    assert orders == [] and [r.rule for r in refusals] == ["max_drawdown", "halted"]
    await h.engine.bus.drain()
    kinds = [type(e).__name__ for e in h.log if e.ts == DAY0 + 2 * HOUR_MS]
    assert kinds == ["PortfolioValued", "TargetWeights", "RiskRefusal", "RiskRefusal"]


def test_max_order_notional_cuts_an_order_to_the_cap_on_the_lot() -> None:
    h = Harness(cash=10_000.0, max_order_notional=1_234.567)
    # The policy wants 50% of 10 000 in BTC at 100: 50 BTC, 5 000 USDT in one order.
    orders, refusals = h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, {"BTC": 0.5, "USDT": 0.5})
    # Allowed: 1 234.567 / 100 = 12.34567 BTC, rounded down to the 0.01 lot: 12.34 (1 234 USDT).
    assert sides(orders) == [("BTC/USDT", "buy", 12.34)]
    assert [pinned(r) for r in refusals] == [("max_order_notional", "BTC", 5_000.0, 1_234.0)]
    assert "cap 1234.57 USDT" in refusals[0].detail


def test_max_order_notional_drops_an_order_whose_cut_is_not_tradable() -> None:
    h = Harness(max_order_notional=4.0)  # below the 5 USDT minimum notional
    orders, refusals = h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, {"BTC": 0.5, "USDT": 0.5})
    assert orders == []
    assert [pinned(r) for r in refusals] == [("max_order_notional", "BTC", 500.0, 0.0)]
    assert "dropped" in refusals[0].detail


def test_max_daily_turnover_cuts_then_drops_and_resets_on_the_next_utc_day() -> None:
    h = Harness(max_daily_turnover=0.5)  # 0.5 x 1 000 = 500 USDT a day
    prices = {"BTC": 100.0, "ETH": 10.0}
    orders, refusals = h.step(DAY0 + HOUR_MS, prices, {"BTC": 0.3, "USDT": 0.7})
    assert sides(orders) == [("BTC/USDT", "buy", 3.0)] and refusals == []  # 300 of 500 used
    # Now all BTC out, half the equity into ETH: a 300 sell then a 500 buy; 200 are left.
    orders, refusals = h.step(DAY0 + 2 * HOUR_MS, prices, {"ETH": 0.5, "USDT": 0.5})
    assert sides(orders) == [("BTC/USDT", "sell", 2.0)]  # the sell, planned first, is cut
    assert [pinned(r) for r in refusals] == [
        ("max_daily_turnover", "BTC", 300.0, 200.0),
        ("max_daily_turnover", "ETH", 500.0, 0.0),
    ]
    assert h.engine.gate.day_turnover == pytest.approx(500.0)
    # Later the same day nothing more can trade.
    orders, refusals = h.step(DAY0 + 23 * HOUR_MS, prices, {"ETH": 0.5, "USDT": 0.5})
    assert orders == [] and [r.rule for r in refusals] == ["max_daily_turnover"] * 2
    # The next UTC day starts a fresh budget from that day's first equity (still 1 000).
    # Selling the last BTC (100) and buying 400 of ETH uses all of it, and is allowed.
    orders, refusals = h.step(DAY0 + DAY_MS, prices, {"ETH": 0.4, "USDT": 0.6})
    assert sides(orders) == [("BTC/USDT", "sell", 1.0), ("ETH/USDT", "buy", 40.0)]
    assert refusals == []
    assert h.engine.gate.day_turnover == pytest.approx(500.0)


def drawdown_setup(**risk: object) -> Harness:
    """All-in BTC at 100, then a 21% fall: the switch (max_drawdown 0.2) trips at the close."""
    h = Harness(max_drawdown=0.2, **risk)
    orders, _ = h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, {"BTC": 1.0})
    assert sides(orders) == [("BTC/USDT", "buy", 10.0)]
    orders, refusals = h.step(DAY0 + 2 * HOUR_MS, {"BTC": 90.0}, {"BTC": 1.0})  # -10%: fine
    assert orders == [] and refusals == []
    assert h.engine.gate.halted is None
    return h


def test_kill_switch_halt_stops_every_order_until_resumed() -> None:
    h = drawdown_setup()
    # Equity 790 is 21% below the 1 000 peak; the policy wants to sell half.
    orders, refusals = h.step(DAY0 + 3 * HOUR_MS, {"BTC": 79.0}, {"BTC": 0.5, "USDT": 0.5})
    assert orders == []
    assert [pinned(r) for r in refusals] == [
        ("max_drawdown", "*", 0.21, 0.2),
        ("halted", "*", 395.0, 0.0),  # what the sell would have traded
    ]
    assert "halt" in refusals[0].detail and "halted by kill switch" in refusals[1].detail
    assert h.engine.gate.halted is not None
    # Recovery does not lift the halt; one "halted" refusal per decision, no orders.
    orders, refusals = h.step(DAY0 + 4 * HOUR_MS, {"BTC": 85.0}, {"USDT": 1.0})
    assert orders == [] and [r.rule for r in refusals] == ["halted"]
    # The operator resumes: the peak restarts at the current equity (850), orders flow again.
    h.engine.gate.resume()
    assert h.engine.gate.halted is None and h.engine.gate.peak == pytest.approx(850.0)
    orders, refusals = h.step(DAY0 + 5 * HOUR_MS, {"BTC": 85.0}, {"USDT": 1.0})
    assert sides(orders) == [("BTC/USDT", "sell", 10.0)] and refusals == []


def test_kill_switch_flatten_sells_everything_once_then_halts() -> None:
    h = Harness(
        max_drawdown=0.2,
        on_drawdown="flatten",
        cash=0.0,
        holdings={"BTC": 5.005, "ETH": 20.0},  # 0.005 BTC below the 0.01 lot: dust stays
    )
    prices = {"BTC": 100.0, "ETH": 10.0}
    orders, _ = h.step(DAY0 + HOUR_MS, prices, None)  # equity 700.5: the peak
    assert orders == []
    # A 25% fall; the policy still wants BTC, but the switch replaces it with 100% cash.
    crash = {"BTC": 75.0, "ETH": 7.5}
    orders, refusals = h.step(DAY0 + 2 * HOUR_MS, crash, {"BTC": 1.0})
    assert sides(orders) == [("BTC/USDT", "sell", 5.0), ("ETH/USDT", "sell", 20.0)]
    assert [pinned(r) for r in refusals] == [("max_drawdown", "*", 0.25, 0.2)]
    assert "flatten" in refusals[0].detail
    assert h.engine.account.holdings == {"BTC": pytest.approx(0.005), "ETH": 0.0}
    # Nothing tradable is left: the flatten is complete, and from now on nothing trades.
    orders, refusals = h.step(DAY0 + 3 * HOUR_MS, crash, {"BTC": 1.0})
    assert orders == [] and [pinned(r) for r in refusals] == [("halted", "*", 0.0, 0.0)]
    orders, refusals = h.step(DAY0 + 4 * HOUR_MS, crash, {"BTC": 1.0})
    assert orders == [] and [r.rule for r in refusals] == ["halted"]
    assert h.engine.gate.snapshot()["flattened"] is True
    h.engine.gate.resume()
    orders, _ = h.step(DAY0 + 5 * HOUR_MS, crash, {"BTC": 0.5, "USDT": 0.5})
    assert [o.side for o in orders] == ["buy"]


SPLIT = {"BTC": 0.4, "ETH": 0.4, "USDT": 0.2}


def test_stale_bar_of_one_coin_blocks_every_order_of_the_decision() -> None:
    h = Harness(stale_after_bars=2)
    both = {"BTC": 100.0, "ETH": 10.0}
    h.step(DAY0 + HOUR_MS, both, None)
    # ETH's bar is 2 intervals old: still fresh enough.
    orders, refusals = h.step(
        DAY0 + 3 * HOUR_MS, {"BTC": 100.0}, {"BTC": 0.4, "ETH": 0.4, "USDT": 0.2}
    )
    assert sides(orders) == [("BTC/USDT", "buy", 4.0), ("ETH/USDT", "buy", 40.0)]
    assert refusals == []
    # 3 intervals old: no order at all, not even the BTC one; ETH is involved by the holdings.
    orders, refusals = h.step(DAY0 + 4 * HOUR_MS, {"BTC": 100.0}, {"BTC": 0.8, "USDT": 0.2})
    assert orders == []
    assert [pinned(r) for r in refusals] == [("stale_data", "ETH", 3.0, 2.0)]
    assert "3 bars" in refusals[0].detail
    # A fresh ETH bar lifts it: nothing is latched.
    orders, refusals = h.step(DAY0 + 5 * HOUR_MS, both, {"BTC": 0.8, "USDT": 0.2})
    assert [o.symbol for o in orders] == ["ETH/USDT", "BTC/USDT"] and refusals == []


def test_a_wanted_coin_without_any_bar_is_stale() -> None:
    h = Harness()
    orders, refusals = h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, {"BTC": 0.5, "ETH": 0.5})
    assert orders == []
    assert [(r.rule, r.asset, r.wanted) for r in refusals] == [("stale_data", "ETH", float("inf"))]


def test_stale_check_can_be_disabled() -> None:
    h = Harness(stale_after_bars=None)
    h.step(DAY0 + HOUR_MS, {"BTC": 100.0, "ETH": 10.0}, None)
    orders, refusals = h.step(
        DAY0 + 9 * HOUR_MS, {"BTC": 100.0}, {"BTC": 0.4, "ETH": 0.4, "USDT": 0.2}
    )
    assert len(orders) == 2 and refusals == []


def test_snapshot_and_restore_keep_a_tripped_switch_tripped() -> None:
    h = drawdown_setup()
    h.step(DAY0 + 3 * HOUR_MS, {"BTC": 79.0}, {"BTC": 1.0})
    state = json.loads(json.dumps(h.engine.gate.snapshot()))  # as the daemon stores it
    assert state["halted"] and state["peak"] == pytest.approx(1_000.0)
    assert state["day"] == DAY0 // DAY_MS and state["day_turnover"] == pytest.approx(1_000.0)
    # A restarted daemon: a fresh engine holding the same coins, its gate restored.
    again = Harness(max_drawdown=0.2, cash=0.0, holdings={"BTC": 10.0})
    again.engine.gate.restore(state)
    assert again.engine.gate.snapshot() == state
    orders, refusals = again.step(DAY0 + 4 * HOUR_MS, {"BTC": 95.0}, {"USDT": 1.0})
    assert orders == [] and [r.rule for r in refusals] == ["halted"]
    again.engine.gate.resume()
    orders, _ = again.step(DAY0 + 5 * HOUR_MS, {"BTC": 95.0}, {"USDT": 1.0})
    assert sides(orders) == [("BTC/USDT", "sell", 10.0)]


def test_pause_keeps_deciding_and_refusing_but_sends_no_order() -> None:
    h = Harness(max_weight_per_coin=0.4)
    h.engine.planner.paused = True
    orders, refusals = h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, {"BTC": 1.0})
    assert orders == []
    assert [pinned(r) for r in refusals] == [("max_weight_per_coin", "BTC", 1.0, 0.4)]
    h.engine.planner.paused = False
    orders, _ = h.step(DAY0 + 2 * HOUR_MS, {"BTC": 100.0}, {"BTC": 1.0})
    assert sides(orders) == [("BTC/USDT", "buy", 4.0)]


async def test_a_backtest_halts_at_the_trip_and_defaults_refuse_nothing() -> None:
    closes = [100.0, 98.0, 95.0, 88.0, 86.0, 90.0, 95.0, 99.0]  # -14% from the peak at bar 3
    bars = pd.DataFrame(
        {
            "open_time": [DAY0 + i * HOUR_MS for i in range(len(closes))],
            "open": closes,
            "high": closes,
            "low": closes,
            "close": closes,
            "volume": [1.0] * len(closes),
        }
    )
    driver = ReplayDriver({"BTC/USDT": bars}, exchange="x", timeframe="1h")
    cfg = AppConfig(market=MarketConfig(coins=("BTC",), timeframe="1h"))
    # Rebalance to 50% BTC at every close: a trade at every decision while allowed (the last
    # decision has no next open to fill at).
    policy = ScriptedPolicy()
    policy.wants = {"BTC": 0.5, "USDT": 0.5}
    free = await run_backtest(cfg, policy, driver, name="free")
    assert free.refusals.empty  # no cap, no turnover limit, no kill switch, no stale bar
    assert len(free.trades) == len(closes) - 1
    guarded = cfg.model_copy(update={"risk": RiskConfig(max_drawdown=0.05)})
    result = await run_backtest(guarded, policy, driver, name="guarded")
    trip = DAY0 + 4 * HOUR_MS  # the close of bar 3 (88): equity about 6% below the peak
    # One trip, then one "halted" per decision: the trip close and the 4 after it.
    assert result.refusals["rule"].tolist() == ["max_drawdown"] + ["halted"] * 5
    assert result.refusals["ts"].iloc[0] == trip
    assert (result.trades["ts"] < trip).all()  # no fill of the trip decision or any later one


def test_a_coin_with_an_order_of_unknown_fate_keeps_its_weight_and_the_others_share_the_rest() -> (
    None
):
    h = Harness(cash=500.0, holdings={"BTC": 5.0})  # BTC 500 of equity 1 000: weight 0.5
    h.engine.planner.blocked = {"BTC": "order rlpm-1-BTC-b is of unknown fate"}
    orders, refusals = h.step(
        DAY0 + HOUR_MS, {"BTC": 100.0, "ETH": 10.0}, {"BTC": 0.0, "ETH": 0.8, "USDT": 0.2}
    )
    # No BTC order at all; ETH gets its 0.8 scaled into the 0.5 BTC leaves: 500 USDT of ETH.
    assert sides(orders) == [("ETH/USDT", "buy", 50.0)]
    assert [pinned(r) for r in refusals] == [("order_unknown", "BTC", 0.0, 0.5)]
    assert "unknown fate" in refusals[0].detail


def test_no_market_order_exceeds_the_markets_largest_market_order() -> None:
    h = Harness(cash=10_000.0)
    h.engine.rules["BTC"] = MarketRules(0.01, 0.01, 5.0, max_market_amount=20.0)
    orders, _ = h.step(DAY0 + HOUR_MS, {"BTC": 100.0}, {"BTC": 0.5, "USDT": 0.5})
    assert sides(orders) == [("BTC/USDT", "buy", 20.0)]  # 50 wanted; the rest next decision
