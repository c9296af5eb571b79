"""The backtest engine on small fixed data: pinned trades, fill timing, ordering, filters."""

from __future__ import annotations

import pandas as pd
import pytest

from backtest.replay import ReplayDriver
from backtest.run import run_backtest
from bot.engine import DecisionContext, Engine
from bot.engine.kernel import market_rules
from bot.engine.rules import MarketRules
from bot.engine.step import instants
from bot.events import Bar, OrderFilled, SubmitOrder
from bot.timeframes import HOUR_MS
from bot.venues.sim import SimVenue
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
    """Answers a fixed list of target weights, one per decision (then no new target)."""

    name = "script"

    def __init__(self, script: list[dict[str, float]]) -> None:
        self.script = list(script)
        self.decisions: list[int] = []

    def decide(self, context: DecisionContext) -> dict[str, float] | None:
        if not context.deciding:
            return None
        self.decisions.append(context.ts)
        return self.script.pop(0) if self.script else None


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


async def test_account_mirrors_the_venue_balances() -> None:
    cfg = config()
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    venue = SimVenue(cfg.broker, "USDT", market_rules(cfg), driver.next_open)
    engine = Engine(cfg, ScriptedPolicy(SCRIPT))
    for instant in driver.instants():
        for order in engine.step(instant).orders:
            fill = venue.execute(order)
            if isinstance(fill, OrderFilled):
                engine.book(fill)
    assert engine.account.cash == pytest.approx(venue.balances_held["USDT"], abs=1e-9)
    for coin in ("BTC", "ETH"):
        assert engine.account.holdings[coin] == pytest.approx(venue.balances_held[coin], abs=1e-12)


async def test_replay_yields_known_metrics_with_the_bars_of_each_close() -> None:
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
    seen = [
        (
            (i.ts - T0) // HOUR_MS,
            [m.value for m in i.metrics],
            [(b.ts - T0) // HOUR_MS for b in i.bars],
            i.decide,
        )
        for i in driver.instants()
    ]
    assert seen == [
        (1, [], [1], False),  # warm-up: bars, no decision
        (2, [1.0], [2], True),  # known exactly at this close: part of it
        (3, [2.0], [3], True),  # known 1 ms after the close of bar 2: waits for the next close
        (4, [], [4], True),
    ]


async def test_the_live_drivers_instants_equal_the_replays() -> None:
    metrics = pd.DataFrame(
        {
            "asset": ["BTC", "ETH", "BTC"],
            "name": ["a", "b", "a"],
            "observed_at": [T0 - 24 * HOUR_MS, T0, T0],
            "known_at": [T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS, T0 + 5 * HOUR_MS + 7],
            "value": [1.0, 2.0, 3.0],
        }
    )
    driver = ReplayDriver(
        BARS, exchange="x", timeframe="1h", metrics=metrics, start_ms=T0 + 3 * HOUR_MS
    )
    replayed = list(driver.instants())
    bars = sorted((b for i in replayed for b in i.bars), key=lambda b: (b.ts, b.symbol))
    known = [m for i in replayed for m in i.metrics]
    live = list(instants(bars, known, decide_from=T0 + 3 * HOUR_MS))
    assert live == replayed


async def test_orders_below_min_notional_and_beyond_the_balance_are_refused() -> None:
    cfg = config()
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    rules = {"BTC": MarketRules(0.001, 0.01, 5.0), "ETH": MarketRules(0.001, 0.01, 5.0)}
    venue = SimVenue(cfg.broker, "USDT", rules, driver.next_open, cash=100.0)
    tiny = venue.execute(SubmitOrder(T0 + HOUR_MS, "a", "BTC/USDT", "buy", 0.01))
    assert tiny.reason.startswith("notional")  # type: ignore[union-attr]
    big = venue.execute(SubmitOrder(T0 + HOUR_MS, "b", "BTC/USDT", "buy", 50.0))
    assert big.amount * big.price * 1.001 <= 100.0 + 1e-9  # type: ignore[union-attr]
    short = venue.execute(SubmitOrder(T0 + HOUR_MS, "c", "ETH/USDT", "sell", 1.0))
    assert short.reason == "insufficient balance"  # type: ignore[union-attr]
    late = venue.execute(SubmitOrder(T0 + 99 * HOUR_MS, "d", "BTC/USDT", "buy", 0.1))
    assert "end of data" in late.reason  # type: ignore[union-attr]


async def test_risk_gate_caps_weights_and_reports_each_refusal() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    cfg = config(max_weight_per_coin=0.4, min_cash=0.1)
    result = await run_backtest(cfg, ScriptedPolicy([{"BTC": 1.0}]), driver, name="capped")
    assert result.refusals["rule"].tolist() == ["max_weight_per_coin"]
    assert result.refusals["allowed"].tolist() == [0.4]
    assert result.weights["BTC"].max() < 0.45
    # The audit trail: what the policy wanted, what the gate allowed, and the rule.
    audit = result.audit.set_index("asset")
    assert audit.loc["BTC", "wanted"] == 1.0 and audit.loc["BTC", "allowed"] == 0.4
    assert audit.loc["BTC", "rules"] == "max_weight_per_coin"
    assert audit.loc["USDT", "allowed"] == pytest.approx(0.6)


async def test_the_audit_keeps_orders_the_cash_and_the_filters_trimmed() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    result = await run_backtest(config(), ScriptedPolicy(SCRIPT[:1]), driver, name="trim")
    # 50% BTC and 50% ETH with fees cannot both be paid from 1000: both buys are scaled.
    trims = result.trims
    assert set(trims["reason"]) == {"scaled to the cash"}
    assert set(trims["coin"]) == {"BTC", "ETH"} and (trims["planned"] < trims["wanted"]).all()


async def test_the_same_driver_replays_identically_for_two_engines() -> None:
    driver = ReplayDriver(BARS, exchange="x", timeframe="1h")
    first = await run_backtest(config(), ScriptedPolicy(SCRIPT), driver, name="a")
    second = await run_backtest(config(), ScriptedPolicy(SCRIPT), driver, name="b")
    pd.testing.assert_series_equal(first.equity, second.equity)
    pd.testing.assert_frame_equal(first.trades, second.trades)


def test_bars_carry_close_time_as_their_timestamp() -> None:
    bar = Bar(T0 + HOUR_MS, "x", "BTC/USDT", "1h", T0, 1, 1, 1, 1, 1)
    assert bar.ts - bar.open_time == HOUR_MS
