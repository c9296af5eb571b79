"""Order slicing: when an order is sliced, how the schedule follows the signal's decay, and what
slicing saves under the simulated venue's square-root market impact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest.replay import ReplayDriver
from backtest.run import run_backtest
from bot.engine import DecisionContext, Instant
from bot.engine.execution import Slicer
from bot.engine.rules import MarketRules
from bot.events import Bar, SubmitOrder, TargetWeights
from bot.timeframes import HOUR_MS
from config.schema import (
    AppConfig,
    BrokerConfig,
    ExecutionConfig,
    MarketConfig,
    MarketRulesConfig,
)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
RULES = {"BTC": MarketRules(0.001, 0.01, 5.0)}


def slicer(**execution: object) -> Slicer:
    cfg = ExecutionConfig(**{"slice_above_volume_share": 0.02, "max_slices": 4, **execution})
    s = Slicer(cfg, HOUR_MS, RULES)
    for i in range(20):  # a mean bar volume of 100 BTC
        bar = Bar(T0 + i * HOUR_MS, "x", "BTC/USDT", "1h", T0, 1, 1, 1, 100.0, 100.0)
        s.observe(Instant(bar.ts, (), (bar,)), None)
    return s


def order(amount: float) -> SubmitOrder:
    return SubmitOrder(T0, "rlpm-1-BTC-b", "BTC/USDT", "buy", amount, reference_price=100.0)


def test_an_order_above_its_share_of_the_volume_is_sliced_over_the_interval() -> None:
    s = slicer(schedule="twap")
    assert [p.order.amount for p in s.slices(order(1.5))] == [1.5]  # 1.5 < 2% of 100: at once
    parts = s.slices(order(5.0))  # 2.5x the threshold: 3 slices
    assert [p.order.amount for p in parts] == [1.666, 1.666, 1.668]
    assert [p.offset_ms for p in parts] == [0, HOUR_MS // 4, HOUR_MS // 2]
    assert [p.order.client_order_id for p in parts] == [f"rlpm-1-BTC-b{i}" for i in (1, 2, 3)]
    assert len(s.slices(order(50.0))) == 4  # max_slices


def test_a_fast_decaying_signal_is_front_loaded_and_a_persistent_one_is_twap() -> None:
    fast, slow = slicer(), slicer()
    for i in range(30):
        fast.observe(Instant(T0, (), ()), TargetWeights(T0, (("BTC", float(i % 2)),), "p"))
        slow.observe(Instant(T0, (), ()), TargetWeights(T0, (("BTC", i / 30),), "p"))
    assert fast.decay("BTC") == pytest.approx(-1.0)
    assert [p.order.amount for p in fast.slices(order(8.0))] == [8.0]  # no persistence: now
    assert slow.decay("BTC") > 0.99
    shares = [p.order.amount for p in slow.slices(order(8.0))]
    assert shares == [2.0, 2.0, 2.0, 2.0]  # persistent: TWAP
    medium = slicer()
    for i in range(30):  # a signal that half-decays in about a bar
        medium.observe(Instant(T0, (), ()), TargetWeights(T0, (("BTC", 0.5 ** (i % 6)),), "p"))
    amounts = [p.order.amount for p in medium.slices(order(8.0))]
    assert amounts == sorted(amounts, reverse=True) and amounts[0] > amounts[-1]
    assert sum(amounts) == pytest.approx(8.0)


class Flipper:
    """All in, then all out, every ``every`` decisions."""

    name = "flipper"

    def __init__(self, every: int = 5) -> None:
        self.every, self.count = every, 0

    def decide(self, context: DecisionContext) -> dict[str, float] | None:
        if not context.deciding:
            return None
        self.count += 1
        return {"BTC": 1.0} if (self.count // self.every) % 2 == 0 else {}


async def test_slicing_pays_less_market_impact_than_single_orders() -> None:
    rng = np.random.default_rng(3)
    n = 400
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.004, n)))
    frame = pd.DataFrame(
        {
            "open_time": T0 + HOUR_MS * np.arange(n),
            "open": np.r_[100.0, close[:-1]],
            "high": close * 1.002,
            "low": close * 0.998,
            "close": close,
            "volume": np.full(n, 20_000.0),  # an all-in order (~100 BTC) meets 1 000 at once
        }
    )

    def config(**execution: object) -> AppConfig:
        return AppConfig(
            market=MarketConfig(coins=("BTC",), timeframe="1h"),
            broker=BrokerConfig(
                initial_cash=10_000.0,
                default_rules=MarketRulesConfig(step_size=0.001, tick_size=0.01, min_notional=5.0),
            ),
            execution=ExecutionConfig(impact_coefficient=0.02, **execution),
        )

    driver = ReplayDriver({"BTC/USDT": frame}, exchange="x", timeframe="1h")
    single = await run_backtest(config(), Flipper(), driver, name="single")
    sliced = await run_backtest(
        config(slice_above_volume_share=0.001, max_slices=4, schedule="twap"),
        Flipper(),
        driver,
        name="sliced",
    )
    assert len(sliced.trades) > 3 * len(single.trades)  # the orders went out in slices
    per_notional = [run.impact_paid / run.trades["notional"].sum() for run in (single, sliced)]
    assert per_notional[1] < 0.6 * per_notional[0]  # about 1/sqrt(4) of the impact
    assert sliced.trading_cost < single.trading_cost
