"""The not-ready rule: a module whose metric has no recent value is counted by ``[live].not_ready``
(cash, or the weight it voted while ready) and reported, and is ready again once a recent value
is published."""

from __future__ import annotations

import pytest

from bot.engine.account import Account
from bot.engine.step import DecisionContext, Instant
from bot.events import Bar, Metric, ModuleDecision
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from strategies.live import ReadyVote
from strategies.portfolio import PortfolioVote

DAY = to_ms("2024-03-10T00:00:00")
MVRV = ("BTC", "mvrv_usd")


class Module:
    """Votes ``weight`` for its coin at every bar of its symbol."""

    def __init__(self, coin: str, weight: float, keys: frozenset[tuple[str, str]]) -> None:
        self.coin, self.model_id, self.symbol = coin, f"{coin}-m", f"{coin}/USDT"
        self.metric_keys = keys
        self.weight = weight

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        if bar.symbol != self.symbol:
            return None
        return ModuleDecision(bar.ts, self.model_id, self.coin, 1 - self.weight, self.weight)

    def on_metric(self, metric: Metric) -> None:
        pass


def step(policy: ReadyVote, ts: int, metrics: tuple[Metric, ...] = ()) -> dict[str, float]:
    bars = tuple(
        Bar(ts, "binance", f"{c}/USDT", "1h", ts - HOUR_MS, 1, 1, 1, 1, 1) for c in ("BTC", "ETH")
    )
    answer = policy.decide(DecisionContext(Instant(ts, metrics, bars), Account("USDT", 1000.0)))
    assert answer is not None
    return dict(answer)


def value(day: int) -> Metric:
    return Metric(day + DAY_MS, *MVRV, day, 1.0)


@pytest.mark.parametrize(("rule", "btc_while_stale"), [("cash", 0.0), ("hold", 0.4)])
def test_a_stale_module_is_counted_by_the_rule_and_reported_then_ready_again(
    rule: str, btc_while_stale: float
) -> None:
    btc = Module("BTC", 0.8, frozenset({MVRV}))
    policy = ReadyVote(
        PortfolioVote("USDT", [btc, Module("ETH", 1.0, frozenset())]),
        max_age_ms=DAY_MS,
        rule=rule,
    )
    policy.seed({MVRV: DAY - DAY_MS})  # yesterday's value: fresh at DAY
    assert step(policy, DAY + HOUR_MS)["BTC"] == pytest.approx(0.4)
    assert policy.not_ready() == {}

    btc.weight = 0.2  # what the module wants now does not count while it is not ready
    stale_at = DAY + DAY_MS + 2 * HOUR_MS  # the value's day ended 26 h ago
    weights = step(policy, stale_at)
    assert policy.not_ready() == {"BTC": "metric mvrv_usd has no value since 2024-03-09"}
    assert weights["BTC"] == pytest.approx(btc_while_stale)
    assert weights["ETH"] == pytest.approx(0.5)
    assert sum(weights.values()) == pytest.approx(1.0)

    weights = step(policy, stale_at + HOUR_MS, (value(DAY),))  # a recent value is published
    assert policy.not_ready() == {}
    assert weights["BTC"] == pytest.approx(0.1)


def test_a_series_never_seen_says_it_has_no_value() -> None:
    policy = ReadyVote(
        PortfolioVote("USDT", [Module("BTC", 1.0, frozenset({MVRV}))]), max_age_ms=DAY_MS
    )
    assert step(policy, DAY)["BTC"] == 0.0
    assert policy.not_ready() == {"BTC": "metric mvrv_usd has no value"}


def test_an_unknown_rule_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="'flat'"):
        ReadyVote(PortfolioVote("USDT"), max_age_ms=DAY_MS, rule="flat")
