"""The trading engine: the objects that turn events into orders, identical in backtest and live.

A driver (``backtest.replay.ReplayDriver`` or the live driver) publishes ``Metric``, ``Bar`` and
``BarsClosed`` events into the engine's bus; a policy (the Crypto Module vote, or a baseline)
answers ``BarsClosed`` with ``TargetWeights``; the :class:`~bot.engine.planner.OrderPlanner`
passes them through the :class:`~bot.engine.risk.RiskGate` and turns them into ``SubmitOrder``
commands; an executor (simulated broker, paper or exchange) answers with ``OrderFilled`` or
``OrderRejected``; the :class:`~bot.engine.account.Account` books fills and marks to market.

The gate's guardrails (weight caps, stale data, order notional, daily turnover, the drawdown kill
switch) all come from ``[risk]`` and run identically in backtests and in the daemon; every change
they make is a ``RiskRefusal`` event (rule names in :mod:`bot.engine.risk`).
"""

from bot.engine.account import Account
from bot.engine.kernel import Policy, TradingEngine
from bot.engine.planner import OrderPlanner
from bot.engine.risk import RiskGate
from bot.engine.rules import MarketRules

__all__ = ["Account", "MarketRules", "OrderPlanner", "Policy", "RiskGate", "TradingEngine"]
