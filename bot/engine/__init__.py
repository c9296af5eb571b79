"""The trading engine: the objects that turn instants into orders, identical in backtest and live.

A driver (``backtest.replay.ReplayDriver`` or the live driver) builds
:class:`~bot.engine.step.Instant` s (a bar close: the metrics that became known, the bars that
closed) and calls :meth:`~bot.engine.kernel.Engine.step` once per instant. The step marks the
:class:`~bot.engine.account.Account` to market, lets the :class:`~bot.engine.risk.RiskGate`
follow equity (its drawdown kill switch), asks the policy (``decide(context)``: the Crypto
Module vote, a baseline, any later policy), reviews its target through the gate and has the
:class:`~bot.engine.planner.OrderPlanner` turn it into orders. A venue (simulated, paper or the
exchange) fills them and the fills come back through ``Engine.book``.

The gate's guardrails (weight caps, stale data, order notional, daily turnover, the drawdown kill
switch) all come from ``[risk]`` and run identically in backtests and in the daemon; every change
they make is a ``RiskRefusal`` (rule names in :mod:`bot.engine.risk`).
"""

from bot.engine.account import Account
from bot.engine.kernel import Engine
from bot.engine.planner import OrderPlanner
from bot.engine.risk import RiskGate
from bot.engine.rules import MarketRules
from bot.engine.step import DecisionContext, Instant, Policy, StepResult, Stretch

__all__ = [
    "Account",
    "DecisionContext",
    "Engine",
    "Instant",
    "MarketRules",
    "OrderPlanner",
    "Policy",
    "RiskGate",
    "StepResult",
    "Stretch",
]
