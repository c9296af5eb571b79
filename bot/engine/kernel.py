"""The engine: one straight-line step per bar close, the same objects in backtests and live.

:meth:`Engine.step` is the whole order of operations, written out:

1. mark to market: the instant's bars give the account its prices and last bars;
2. kill switch: the gate follows this close's equity and trips on a drawdown past the limit;
3. decision: the policy's ``decide`` (at every instant; its answer is used only when the instant
   decides);
4. risk review: weight caps, min cash, coins blocked by an order of unknown fate, stale data,
   pause, order notional, daily turnover (:class:`~bot.engine.planner.OrderPlanner`);
5. order plan: lot- and notional-valid orders, sells first, deterministic client ids.

A replay may hand a :class:`~bot.engine.step.Stretch` of instants at which the policy declared
it will not trade to :meth:`Engine.coast`: steps 1 and 2 for all of them at once, vectorised,
with the same results as stepping each (steps 3-5 would do nothing).

The step returns a :class:`~bot.engine.step.StepResult` (target, refusals, orders) and the
driver hands the orders to a venue, whose fills come back through :meth:`Engine.book`. The bus
is for observers only (recorders, the journal, Telegram, logs): the engine publishes on it what
happened, it never routes a decision through it. Operator commands (pause, resume, flatten) are
events too (:meth:`Engine.command`): the step is synchronous, so a command always falls
between two steps, and is published, journalled and applied in the order it came.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bot.bus import EventBus
from bot.engine.account import SYMBOL_COINS, Account, coin_of
from bot.engine.planner import OrderPlanner
from bot.engine.risk import RiskGate
from bot.engine.rules import MarketRules
from bot.engine.step import (
    DecisionContext,
    Instant,
    Policy,
    StepResult,
    Stretch,
    target_weights,
)
from bot.events import (
    Event,
    FlattenPositions,
    OperatorCommand,
    OrderFilled,
    OrderRejected,
    PauseTrading,
    PortfolioValued,
    ResumeTrading,
    RiskRefusal,
    SubmitOrder,
)
from config.schema import AppConfig

_new = tuple.__new__  # builds the step's result without a Python-level constructor call


def market_rules(cfg: AppConfig) -> dict[str, MarketRules]:
    """The configured exchange filters of every coin."""
    return {
        coin: MarketRules(**cfg.broker.rules_for(coin).model_dump()) for coin in cfg.market.coins
    }


class Engine:
    """Account, risk gate, planner and policy, stepped one instant at a time."""

    def __init__(
        self,
        cfg: AppConfig,
        policy: Policy,
        *,
        cash: float | None = None,
        holdings: Mapping[str, float] | None = None,
        rules: dict[str, MarketRules] | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.cfg = cfg
        self.bus = bus or EventBus()
        self.quote = quote = cfg.market.quote
        self.rules = rules if rules is not None else market_rules(cfg)
        self.account = Account(quote, cfg.broker.initial_cash if cash is None else cash, holdings)
        self.gate = RiskGate(cfg.risk, quote)
        self.planner = OrderPlanner(
            self.account,
            self.gate,
            self.rules,
            fee_rate=cfg.broker.fee_rate,
            min_trade_weight=cfg.risk.min_trade_weight,
        )
        self.policy = policy
        self._context = DecisionContext(Instant(0, (), (), False), self.account)
        self._watch_drawdown = cfg.risk.max_drawdown is not None

    # -- the step -------------------------------------------------------------------------------

    def step(self, instant: Instant) -> StepResult:
        """One bar close, in the order the module docstring lists."""
        ts, _, bars, deciding = instant
        account = self.account
        if bars:  # 1. mark to market (Account.on_bar and Account.equity, inlined: a hot path)
            prices, last_bars = account.prices, account.last_bars
            for bar in bars:
                symbol = bar[2]
                coin = SYMBOL_COINS.get(symbol) or coin_of(symbol)
                prices[coin] = bar[8]
                last_bars[coin] = bar
        equity = account.cash
        for coin, amount in account.holdings.items():
            if amount:
                equity += amount * account.prices.get(coin, 0.0)
        refusals: tuple[RiskRefusal, ...] = ()
        if self._watch_drawdown:  # 2. kill switch
            tripped = self.gate.observe_equity(ts, equity)
            if tripped is not None:
                refusals = (tripped,)
        context = self._context  # reused from step to step (DecisionContext.reset, inlined)
        context.instant, context.ts = instant, ts
        if context.notes:
            context.notes = []
        wanted = self.policy.decide(context)  # 3. decision
        target = allowed = None
        orders: tuple[SubmitOrder, ...] = ()
        trims: tuple = ()
        if deciding and (wanted is not None or self.gate.flatten_due):
            if wanted is not None:
                target = target_weights(ts, wanted, self.quote, self.policy.name)
            # 4. risk review and 5. order plan (a tripped kill switch acts without a target)
            review = self.planner.review(ts, None if target is None else dict(target.weights))
            orders = tuple(review.orders)
            refusals += tuple(review.refusals)
            if review.allowed is not None:
                allowed = tuple(sorted(review.allowed.items()))
            trims = tuple(review.trims)
        notes = context.notes
        result = _new(
            StepResult,
            (ts, equity, target, refusals, orders, tuple(notes) if notes else (), allowed, trims),
        )
        if self.bus.listening:
            self._publish(result)
        return result

    def coast(self, stretch: Stretch) -> np.ndarray | None:
        """Mark to market and follow the kill switch through ``stretch`` at once; returns the
        equity at each of its instants (before any order: there is none), bit for bit what
        :meth:`step` would have valued. The policy is not called (it declared these instants
        quiet). ``None``, with nothing changed, when the stretch must be stepped one instant at
        a time: a flatten is due (it trades without the policy), the kill switch would trip
        inside it (the step that trips it records why), or a valuation is NaN."""
        if self.gate.flatten_due:
            return None
        account = self.account
        prices = account.prices
        equity = np.full(len(stretch.ts), account.cash)
        for coin, amount in account.holdings.items():  # the step's order of additions
            if amount:
                path = stretch.closes.get(coin)
                if path is None:
                    equity += amount * prices.get(coin, 0.0)
                    continue
                first, values = path
                if first:
                    values = values.copy()
                    values[:first] = prices.get(coin, 0.0)
                equity += amount * values
        if self._watch_drawdown and not self.gate.observe_path(equity):
            return None
        last_bars = account.last_bars
        for bar in stretch.last_bars:
            symbol = bar[2]
            coin = SYMBOL_COINS.get(symbol) or coin_of(symbol)
            prices[coin] = bar[8]
            last_bars[coin] = bar
        return equity

    def book(self, fill: OrderFilled) -> None:
        """A venue's fill: into the account, and to observers."""
        self.account.on_fill(fill)
        if self.bus.listening:
            self.bus.emit(fill)

    def reject(self, rejection: OrderRejected) -> None:
        """A venue's refusal of an order: to observers (the account is unchanged)."""
        if self.bus.listening:
            self.bus.emit(rejection)

    # -- operator commands ----------------------------------------------------------------------

    def command(self, command: OperatorCommand) -> None:
        """Apply an operator command before the next step and publish it (the journal keeps
        it). Steps never await, so a command always falls between two of them."""
        if isinstance(command, PauseTrading):
            self.planner.paused = True
        elif isinstance(command, ResumeTrading):
            self.planner.paused = False
            if self.gate.halted is not None:
                self.gate.resume()
        elif isinstance(command, FlattenPositions):
            self.gate.trip(command.ts, f"flatten asked by {command.by}", flatten=True)
        self.bus.emit(command)

    # -- observers ------------------------------------------------------------------------------

    def valuation(self, ts: int) -> PortfolioValued:
        """The account's mark-to-market at ``ts``."""
        return self.account.valuation(ts)

    def _publish(self, result: StepResult) -> None:
        emit = self.bus.emit
        emit(self.account.valuation(result.ts))
        events: tuple[Event, ...] = result.notes
        for event in events:
            emit(event)
        if result.target is not None:
            emit(result.target)
        for refusal in result.refusals:
            emit(refusal)
        for order in result.orders:
            emit(order)
