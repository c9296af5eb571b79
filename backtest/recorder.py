"""Records what an engine did during a replay, and turns it into a :class:`RunResult`."""

from __future__ import annotations

import pandas as pd

from backtest.result import REFUSAL_COLUMNS, REJECTION_COLUMNS, TRADE_COLUMNS, RunResult
from bot.bus import EventBus
from bot.events import OrderFilled, OrderRejected, PortfolioValued, RiskRefusal


class Recorder:
    """Collects valuations, fills, rejections and risk refusals from a bus."""

    def __init__(self) -> None:
        self.valuations: list[PortfolioValued] = []
        self.fills: list[OrderFilled] = []
        self.rejections: list[OrderRejected] = []
        self.refusals: list[RiskRefusal] = []

    def attach(self, bus: EventBus) -> None:
        """Subscribe to the events a report needs."""
        bus.subscribe(PortfolioValued, self.valuations.append)
        bus.subscribe(OrderFilled, self.fills.append)
        bus.subscribe(OrderRejected, self.rejections.append)
        bus.subscribe(RiskRefusal, self.refusals.append)

    def result(
        self, name: str, *, timeframe: str, quote: str, initial_cash: float, fees_paid: float
    ) -> RunResult:
        """Everything recorded, as frames."""
        index = pd.Index([v.ts for v in self.valuations], dtype="int64", name="ts")
        equity = pd.Series([v.equity for v in self.valuations], index=index, name="equity")
        weights = pd.DataFrame(
            [v.weights(quote) for v in self.valuations], index=index, dtype="float64"
        ).fillna(0.0)
        trades = pd.DataFrame(
            [
                (
                    f.ts,
                    f.client_order_id,
                    f.symbol,
                    f.side,
                    f.amount,
                    f.price,
                    f.fee,
                    f.fee_asset,
                    f.amount * f.price,
                )
                for f in self.fills
            ],
            columns=TRADE_COLUMNS,
        )
        rejections = pd.DataFrame(
            [
                (r.ts, r.client_order_id, r.symbol, r.side, r.amount, r.reason)
                for r in self.rejections
            ],
            columns=REJECTION_COLUMNS,
        )
        refusals = pd.DataFrame(
            [(r.ts, r.rule, r.asset, r.wanted, r.allowed, r.detail) for r in self.refusals],
            columns=REFUSAL_COLUMNS,
        )
        return RunResult(
            name=name,
            timeframe=timeframe,
            quote=quote,
            initial_cash=initial_cash,
            equity=equity,
            weights=weights,
            trades=trades,
            rejections=rejections,
            refusals=refusals,
            fees_paid=fees_paid,
        )
