"""The backtest engine on small fixed data: pinned trades, fill timing, ordering, filters."""

from __future__ import annotations

import pandas as pd
import pytest

from backtest.broker import SimBroker
from backtest.replay import ReplayDriver
from backtest.run import run_backtest
from bot.bus import EventBus
from bot.engine.rules import MarketRules
from bot.events import Bar, BarsClosed, Event, Metric, SubmitOrder, TargetWeights
from bot.timeframes import HOUR_MS
from config.schema import AppConfig, BrokerConfig, MarketConfig, MarketRulesConfig, RiskConfig

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS


def frame(opens: list[float], closes: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "open_time": [T0 + i * HOUR_MS for i in range(len(opens))],
            "open": opens,
            "high": [max(o, c) * 1.01 for o, c in zip(opens, closes, strict=True)],
            "low": [min(o, c) * 0.99 for o, c in zip(opens, closes, strict=True)],
            "close": closes,
            "volume": [1.0] * len(opens),
        }
    )


BARS = {
    "BTC/USDT": frame(
        [100, 101, 104, 103, 108, 110, 107, 111], [101, 104, 103, 108, 110, 107, 111, 112]
    ),
    "ETH/USDT": frame(
        [10, 10.5, 10.2, 9.8, 10.1, 10.6, 10.4, 10.9],
        [10.5, 10.2, 9.8, 10.1, 10.6, 10.4, 10.9, 11.0],
    ),
}


def config(**risk: float) -> AppConfig:
    return AppConfig(
        market=MarketConfig(coins=("BTC", "ETH"), timeframe="1h"),
        broker=BrokerConfig(
            initial_cash=1_000.0,
            fee_rate=0.001,
            slippage_bps=10,
            default_rules=MarketRulesConfig(step_size=0.001, tick_size=0.01, min_notional=5.0),
        ),
        risk=RiskConfig(**risk),
    )


class ScriptedPolicy:
    """Emits a fixed list of target weights, one per decision."""

    def __init__(self, script: list[dict[str, float]]) -> None:
        self.script = list(script)
        self.decisions: list[int] = []

    def attach(self, bus: EventBus) -> None:
        self.emit = bus.emit
        bus.subscribe(BarsClosed, self.on_bars_closed)

    def on_bars_closed(self, event: BarsClosed) -> None:
        self.decisions.append(event.ts)
        if self.script:
            weights = self.script.pop(0)
            self.emit(TargetWeights(event.ts, tuple(sorted(weights.items())), "script"))


SCRIPT = [
    {"BTC": 0.5, "ETH": 0.5, "USDT": 0.0},
    {"BTC": 1.0, "USDT": 0.0},
    {"USDT": 1.0},
    {"ETH": 0.3, "USDT": 0.7},
    {"ETH": 0.3, "USDT": 0.7},
    {"BTC": 0.6, "ETH": 0.4},
]


async def test_golden_run_pins_trades_and_final_equity() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    result = await run_backtest(config(), ScriptedPolicy(SCRIPT), driver, name="golden")
    trades = [
        (int((r.ts - T0) // HOUR_MS), r.symbol, r.side, r.amount, round(r.price, 6))
        for r in result.trades.itertuples()
    ]
    # Checked by hand: the BTC buy at bar 1 is 50% of 1000 at the close 101, scaled by
    # 1000 / 1001 so buys plus fees fit the cash, rounded down to the 0.001 lot (4.945); the ETH
    # buy is then capped by the broker to the cash left at the slipped open (47.481).
    assert trades == [
        (1, "BTC/USDT", "buy", 4.945, 101.101),
        (1, "ETH/USDT", "buy", 47.481, 10.5105),
        (2, "ETH/USDT", "sell", 47.481, 10.1898),
        (2, "BTC/USDT", "buy", 4.638, 104.104),
        (3, "BTC/USDT", "sell", 9.583, 102.897),
        (4, "ETH/USDT", "buy", 29.26, 10.1101),
        (5, "ETH/USDT", "sell", 0.982, 10.5894),
        (6, "BTC/USDT", "buy", 5.565, 107.107),
        (6, "ETH/USDT", "buy", 9.858, 10.4104),
    ]
    assert result.final_equity == pytest.approx(1042.7764757127, abs=1e-9)
    assert result.fees_paid == pytest.approx(result.trades["fee"].sum())
    assert len(result.equity) == 8  # one valuation per close, the first before any trade


async def test_first_golden_fill_is_the_next_open_plus_slippage_and_fee() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    result = await run_backtest(config(), ScriptedPolicy(SCRIPT[:1]), driver, name="one")
    btc = result.trades.iloc[0]
    # Decided at the close of bar 0 (equity 1000 in cash), filled at the open of bar 1.
    assert btc.ts == T0 + HOUR_MS
    assert btc.price == pytest.approx(101.0 * 1.001)
    # 50% of 1000 at the last close 101, scaled so both buys and their fees fit the cash.
    assert btc.amount == pytest.approx(4.945)
    assert btc.fee == pytest.approx(btc.amount * btc.price * 0.001)


async def test_account_mirrors_the_broker_balances() -> None:
    cfg = config()
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    from backtest.recorder import Recorder
    from bot.engine import TradingEngine
    from bot.engine.kernel import market_rules

    broker = SimBroker(cfg.broker, "USDT", market_rules(cfg), driver.next_open)
    engine = TradingEngine(cfg, ScriptedPolicy(SCRIPT), broker)
    Recorder().attach(engine.bus)
    await driver.run(engine.bus)
    assert engine.account.cash == pytest.approx(broker.balances["USDT"], abs=1e-9)
    for coin in ("BTC", "ETH"):
        assert engine.account.holdings[coin] == pytest.approx(broker.balances[coin], abs=1e-12)


async def test_replay_publishes_known_metrics_then_bars_then_the_decision() -> None:
    metrics = pd.DataFrame(
        {
            "asset": ["BTC", "BTC"],
            "name": ["active_addresses", "active_addresses"],
            "observed_at": [T0 - 24 * HOUR_MS, T0],
            "known_at": [T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS + 1],
            "value": [1.0, 2.0],
        }
    )
    driver = ReplayDriver(
        {"BTC/USDT": BARS["BTC/USDT"].iloc[:4]},
        exchange="x",
        timeframe="1h",
        metrics=metrics,
        start_ms=T0 + 2 * HOUR_MS,
    )
    log: list[Event] = []
    bus = EventBus()
    bus.subscribe(Event, log.append)
    await driver.run(bus)
    kinds = [
        (type(e).__name__, (e.ts - T0) // HOUR_MS if e.ts % HOUR_MS == 0 else e.ts - T0)
        for e in log
    ]
    assert kinds == [
        ("Bar", 1),  # warm-up: bars, no decision
        ("Metric", 2),  # known exactly at the close of bar 1: published before that bar
        ("Bar", 2),
        ("BarsClosed", 2),
        ("Metric", 2 * HOUR_MS + 1),  # known 1 ms after the close: waits for the next close
        ("Bar", 3),
        ("BarsClosed", 3),
        ("Bar", 4),
        ("BarsClosed", 4),
    ]
    assert isinstance(log[1], Metric) and log[1].value == 1.0
    assert all(e.ts <= driver.clock.now_ms() for e in log)


async def test_orders_below_min_notional_and_beyond_the_balance_are_refused() -> None:
    cfg = config()
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    rules = {"BTC": MarketRules(0.001, 0.01, 5.0), "ETH": MarketRules(0.001, 0.01, 5.0)}
    broker = SimBroker(cfg.broker, "USDT", rules, driver.next_open, cash=100.0)
    tiny = broker.execute(SubmitOrder(T0 + HOUR_MS, "a", "BTC/USDT", "buy", 0.01))
    assert tiny.reason.startswith("notional")  # type: ignore[union-attr]
    big = broker.execute(SubmitOrder(T0 + HOUR_MS, "b", "BTC/USDT", "buy", 50.0))
    assert big.amount * big.price * 1.001 <= 100.0 + 1e-9  # type: ignore[union-attr]
    short = broker.execute(SubmitOrder(T0 + HOUR_MS, "c", "ETH/USDT", "sell", 1.0))
    assert short.reason == "insufficient balance"  # type: ignore[union-attr]
    late = broker.execute(SubmitOrder(T0 + 99 * HOUR_MS, "d", "BTC/USDT", "buy", 0.1))
    assert "end of data" in late.reason  # type: ignore[union-attr]


async def test_risk_gate_caps_weights_and_reports_each_refusal() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    cfg = config(max_weight_per_coin=0.4, min_cash=0.1)
    result = await run_backtest(cfg, ScriptedPolicy([{"BTC": 1.0}]), driver, name="capped")
    assert result.refusals["rule"].tolist() == ["max_weight_per_coin"]
    assert result.refusals["allowed"].tolist() == [0.4]
    assert result.weights["BTC"].max() < 0.45


async def test_the_same_driver_replays_identically_for_two_engines() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    first = await run_backtest(config(), ScriptedPolicy(SCRIPT), driver, name="a")
    second = await run_backtest(config(), ScriptedPolicy(SCRIPT), driver, name="b")
    pd.testing.assert_series_equal(first.equity, second.equity)
    pd.testing.assert_frame_equal(first.trades, second.trades)


def test_bars_carry_close_time_as_their_timestamp() -> None:
    bar = Bar(T0 + HOUR_MS, "x", "BTC/USDT", "1h", T0, 1, 1, 1, 1, 1)
    assert bar.ts - bar.open_time == HOUR_MS
