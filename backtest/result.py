"""What one backtest run produces: the data every metric, table and plot is computed from."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

TRADE_COLUMNS = [
    "ts",
    "client_order_id",
    "symbol",
    "side",
    "amount",
    "price",
    "fee",
    "fee_asset",
    "notional",
]
REJECTION_COLUMNS = ["ts", "client_order_id", "symbol", "side", "amount", "reason"]
REFUSAL_COLUMNS = ["ts", "rule", "asset", "wanted", "allowed", "detail"]
AUDIT_COLUMNS = ["ts", "asset", "wanted", "allowed", "rules"]
TRIM_COLUMNS = ["ts", "coin", "side", "wanted", "planned", "reason"]
EXPLANATION_COLUMNS = ["ts", "coin", "action", "input", "attribution"]


@dataclass(frozen=True)
class RunResult:
    """One strategy or baseline over one period.

    ``equity``: account equity in the quote currency at every decision close (index: close time,
    int64 epoch ms, ascending; the first value is the equity before any trade).
    ``weights``: actual share of equity per asset at each close (columns: assets, quote included).
    ``trades``: one row per fill (:data:`TRADE_COLUMNS`; ``notional`` = amount * price in quote).
    ``rejections``: orders refused by the broker; ``refusals``: risk-gate interventions.
    ``fees_paid`` in the quote currency; ``timeframe`` of the decisions.
    """

    name: str
    timeframe: str
    quote: str
    initial_cash: float
    equity: pd.Series
    weights: pd.DataFrame
    trades: pd.DataFrame
    rejections: pd.DataFrame
    refusals: pd.DataFrame
    fees_paid: float
    audit: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=AUDIT_COLUMNS))
    """The guardrail audit trail: every close and asset whose allowed weight differs from the
    policy's, with the rules that changed it (:data:`AUDIT_COLUMNS`)."""
    trims: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRIM_COLUMNS))
    """Orders the market's filters or the cash changed (:data:`TRIM_COLUMNS`)."""
    impact_paid: float = 0.0
    """Quote currency lost to the simulated market impact (``[execution]``)."""
    slippage_paid: float = 0.0
    """Quote currency lost to ``[broker].slippage_bps``."""
    explanations: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=EXPLANATION_COLUMNS)
    )
    """What drove the Crypto Modules' decisions (a vote's run only, explained after the run:
    :func:`backtest.pipeline.explain_vote_run`): one row per decision and named input
    (:data:`EXPLANATION_COLUMNS`)."""

    @property
    def trading_cost(self) -> float:
        """Fees, slippage and market impact, in the quote currency."""
        return self.fees_paid + self.impact_paid + self.slippage_paid

    @property
    def final_equity(self) -> float:
        """Equity at the last close (the initial cash when nothing was recorded)."""
        return float(self.equity.iloc[-1]) if len(self.equity) else self.initial_cash
