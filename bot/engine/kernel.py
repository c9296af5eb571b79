"""The kernel: one place that builds and wires the engine, for backtests and live trading alike.

Only the policy (what decides) and the executor (what trades) are passed in; the driver (where
events come from) stays outside. The wiring order below is part of the contract:

1. the account records closes (``Bar``: price and bar time) before anyone decides;
2. at ``BarsClosed`` the account publishes its valuation (``PortfolioValued``) *before* the
   policy answers: the account's handler is subscribed first, so the valuation is queued ahead
   of the policy's ``TargetWeights`` and the risk gate has followed this close's equity (and
   tripped its kill switch if need be) before it reviews this close's decision;
3. the policy handles ``Metric``/``Bar``/``BarsClosed`` and emits ``TargetWeights``;
4. the planner turns ``TargetWeights`` into ``SubmitOrder`` through the risk gate (drawdown
   kill switch, weight caps, stale data, pause, order notional, daily turnover);
5. the executor answers ``SubmitOrder`` with ``OrderFilled``/``OrderRejected``;
6. the account books fills.
"""

from __future__ import annotations

from typing import Protocol

from bot.bus import EventBus
from bot.engine.account import Account
from bot.engine.planner import OrderPlanner
from bot.engine.risk import RiskGate
from bot.engine.rules import MarketRules
from bot.events import Bar, BarsClosed, OrderFilled, PortfolioValued, TargetWeights
from config.schema import AppConfig


class Policy(Protocol):
    """Decides: subscribes its handlers and answers ``BarsClosed`` with ``TargetWeights``."""

    def attach(self, bus: EventBus) -> None:
        """Subscribe to the events the policy needs; emit through ``bus.emit``."""
        ...


class Executor(Protocol):
    """Trades: answers ``SubmitOrder`` with ``OrderFilled`` / ``OrderRejected``."""

    def attach(self, bus: EventBus) -> None:
        """Subscribe to ``SubmitOrder`` (and whatever else the executor needs)."""
        ...


def market_rules(cfg: AppConfig) -> dict[str, MarketRules]:
    """The configured exchange filters of every coin."""
    return {
        coin: MarketRules(**cfg.broker.rules_for(coin).model_dump()) for coin in cfg.market.coins
    }


class TradingEngine:
    """Bus, account, risk gate, planner, policy and executor, wired in the documented order."""

    def __init__(
        self,
        cfg: AppConfig,
        policy: Policy,
        executor: Executor,
        *,
        cash: float | None = None,
        holdings: dict[str, float] | None = None,
        rules: dict[str, MarketRules] | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.cfg = cfg
        self.bus = bus or EventBus()
        quote = cfg.market.quote
        self.rules = rules if rules is not None else market_rules(cfg)
        self.account = Account(
            quote,
            cfg.broker.initial_cash if cash is None else cash,
            holdings,
            emit=self.bus.emit,
        )
        self.gate = RiskGate(cfg.risk, quote)
        self.planner = OrderPlanner(
            self.account,
            self.gate,
            self.rules,
            self.bus.emit,
            fee_rate=cfg.broker.fee_rate,
            min_trade_weight=cfg.risk.min_trade_weight,
        )
        self.policy = policy
        self.executor = executor
        bus = self.bus
        bus.subscribe(Bar, self.account.on_bar)
        bus.subscribe(BarsClosed, self.account.on_bars_closed)
        if cfg.risk.max_drawdown is not None:  # only the kill switch needs equity at each close
            bus.subscribe(PortfolioValued, self.planner.on_portfolio_valued)
        policy.attach(bus)
        bus.subscribe(TargetWeights, self.planner.on_target_weights)
        executor.attach(bus)
        bus.subscribe(OrderFilled, self.account.on_fill)
