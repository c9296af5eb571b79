"""Events: frozen records of things that happened, each stamped with UTC epoch milliseconds.

``ts`` is always the moment the event became true and therefore usable: a ``Bar`` is published
when its candle *closes*, a ``Metric`` when its value becomes *known*. Later units add their order
and portfolio events here, so that every event type lives in one module.

The classes are ``slots`` dataclasses: the replay loop builds millions of them, and slots keep
construction and attribute access cheap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event. ``ts``: UTC epoch ms at which the event is known."""

    ts: int


@dataclass(frozen=True, slots=True)
class Bar(Event):
    """A closed OHLCV candle. ``ts`` is the close time, ``open_time + timeframe``."""

    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True, slots=True)
class Metric(Event):
    """A metric value (on-chain, social, ...). ``ts`` is when it became known.

    ``observed_at`` is the start of the period the value describes (for a daily value, 00:00 UTC
    of its day); ``ts`` is at least the end of that period plus the configured publication lag.
    """

    asset: str
    name: str
    observed_at: int
    value: float


@dataclass(frozen=True, slots=True)
class Heartbeat(Event):
    """The clock reached ``ts`` with no new data; lets handlers act on time alone."""


@dataclass(frozen=True, slots=True)
class BarsClosed(Event):
    """Every bar closing at ``ts`` on ``timeframe`` has been published: time to decide.

    Drivers publish it after the ``Metric`` events known by ``ts`` and the ``Bar`` events closing
    at ``ts``, so a decision taken on it sees all the information of that instant and no more.
    """

    timeframe: str
    symbols: tuple[str, ...]


# -- portfolio decisions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModuleDecision(Event):
    """A Crypto Module's weight pair for its coin: ``cash`` + ``coin`` = 1 (the paper's d_t^i)."""

    module_id: str
    coin: str
    cash: float
    coin_weight: float


@dataclass(frozen=True, slots=True)
class TargetWeights(Event):
    """Wanted share of equity per asset (the quote currency included); weights sum to 1.

    ``source`` says who wants it (``"vote"``, a baseline's name, ``"risk"`` after the gate).
    """

    weights: tuple[tuple[str, float], ...]
    source: str

    def as_dict(self) -> dict[str, float]:
        """The weights as ``{asset: weight}``."""
        return dict(self.weights)


@dataclass(frozen=True, slots=True)
class RiskRefusal(Event):
    """A guardrail changed or blocked what a policy wanted; kept in logs, alerts and state."""

    rule: str
    asset: str
    wanted: float
    allowed: float
    detail: str


# -- orders (commands are imperative, facts past tense) -----------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitOrder(Event):
    """Command to an executor: trade ``amount`` (base units, > 0) of ``symbol``.

    ``client_order_id`` is deterministic (decision time, symbol, side), so a resent intent can be
    recognised by the exchange and by the state store.
    """

    client_order_id: str
    symbol: str
    side: str  # "buy" | "sell"
    amount: float
    order_type: str = "market"
    limit_price: float | None = None
    reference_price: float = 0.0


@dataclass(frozen=True, slots=True)
class OrderFilled(Event):
    """An order (or part of it) was executed. ``fee`` is in ``fee_asset``."""

    client_order_id: str
    symbol: str
    side: str
    amount: float
    price: float
    fee: float
    fee_asset: str


@dataclass(frozen=True, slots=True)
class OrderRejected(Event):
    """An order was refused (by the exchange, the broker's filters or the balance)."""

    client_order_id: str
    symbol: str
    side: str
    amount: float
    reason: str


@dataclass(frozen=True, slots=True)
class PortfolioValued(Event):
    """Mark-to-market of the account at ``ts``: equity in the quote currency and its split."""

    equity: float
    cash: float
    positions: tuple[tuple[str, float], ...]  # asset -> amount held
    weights: tuple[tuple[str, float], ...]  # asset -> share of equity (quote included)
