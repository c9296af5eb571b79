"""Events: immutable records of things that happened, each stamped with UTC epoch milliseconds.

``ts`` is always the moment the event became true and therefore usable: a ``Bar`` is published
when its candle *closes*, a ``Metric`` when its value becomes *known*. Facts are named in the past
tense or as states (``OrderFilled``, ``PortfolioValued``), commands in the imperative
(``SubmitOrder``, ``PauseTrading``).

Implementation: each event is a named tuple that also derives from :class:`Event`. Named tuples
are immutable (assigning a field raises ``AttributeError``) and about eight times cheaper to build
than frozen dataclasses, which matters because a replay builds millions of them. Two consequences:
events compare equal to tuples holding the same values (compare types too where that matters),
and copies with changed fields are made with ``event._replace(field=value)``.
"""

from __future__ import annotations

from typing import NamedTuple


class Event:
    """Base of every event: ``isinstance(x, Event)`` and bus subscriptions to ``Event`` see all.

    Every event's first field is ``ts``: UTC epoch ms at which the event is known.
    """

    __slots__ = ()
    ts: int


# -- market data ------------------------------------------------------------------------------


class _Bar(NamedTuple):
    ts: int
    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class Bar(_Bar, Event):
    """A closed OHLCV candle. ``ts`` is the close time, ``open_time + timeframe``."""

    __slots__ = ()


class _Metric(NamedTuple):
    ts: int
    asset: str
    name: str
    observed_at: int
    value: float


class Metric(_Metric, Event):
    """A metric value (on-chain, social, ...). ``ts`` is when it became known.

    ``observed_at`` is the start of the period the value describes (for a daily value, 00:00 UTC
    of its day); ``ts`` is at least the end of that period plus the configured publication lag.
    """

    __slots__ = ()


# -- portfolio decisions ---------------------------------------------------------------------


class _ModuleDecision(NamedTuple):
    ts: int
    module_id: str
    coin: str
    cash: float
    coin_weight: float


class ModuleDecision(_ModuleDecision, Event):
    """A Crypto Module's weight pair for its coin: ``cash`` + ``coin_weight`` = 1 (the paper's
    d_t^i), decided at the close ``ts``."""

    __slots__ = ()


class _VariantWeights(NamedTuple):
    ts: int
    coin: str
    weights: tuple[tuple[str, float], ...]
    positions: tuple[tuple[str, float], ...]
    exposure: float
    source: str


class VariantWeights(_VariantWeights, Event):
    """A MARS meta-controller's weights over one coin's agent variants at the close ``ts``
    (variant name -> weight, summing to 1), each variant's position then (0 cash, 1 coin, after
    its safety mask) and the coin's exposure, their blend (0..1 of the coin's sleeve).
    ``source`` is the policy's name."""

    __slots__ = ()


class _GrossExposure(NamedTuple):
    ts: int
    exposure: float
    source: str


class GrossExposure(_GrossExposure, Event):
    """The share of equity a manager lets the per-coin agents invest at the close ``ts`` (0..1;
    the rest stays cash); ``source`` is the policy's name."""

    __slots__ = ()


class _TargetWeights(NamedTuple):
    ts: int
    weights: tuple[tuple[str, float], ...]
    source: str


class TargetWeights(_TargetWeights, Event):
    """Wanted share of equity per asset (the quote currency included); weights sum to 1.

    ``source`` says who wants it (``"vote"``, a baseline's name).
    """

    __slots__ = ()

    def as_dict(self) -> dict[str, float]:
        """The weights as ``{asset: weight}``."""
        return dict(self.weights)


class _RiskRefusal(NamedTuple):
    ts: int
    rule: str
    asset: str
    wanted: float
    allowed: float
    detail: str


class RiskRefusal(_RiskRefusal, Event):
    """A guardrail changed or blocked what a policy wanted; kept in logs, alerts and state."""

    __slots__ = ()


# -- orders -----------------------------------------------------------------------------------


class _SubmitOrder(NamedTuple):
    ts: int
    client_order_id: str
    symbol: str
    side: str  # "buy" | "sell"
    amount: float
    order_type: str = "market"
    limit_price: float | None = None
    reference_price: float = 0.0


class SubmitOrder(_SubmitOrder, Event):
    """Command to an executor: trade ``amount`` (base units, > 0) of ``symbol``.

    ``client_order_id`` is deterministic (decision time, coin, side), so a resent intent can be
    recognised by the exchange and by the state store. ``reference_price`` is the price the
    planner sized the order with.
    """

    __slots__ = ()


class _OrderFilled(NamedTuple):
    ts: int
    client_order_id: str
    symbol: str
    side: str
    amount: float
    price: float
    fee: float
    fee_asset: str
    fee_quote: float | None = None


class OrderFilled(_OrderFilled, Event):
    """An order (or part of it) was executed. ``fee`` is in ``fee_asset``; ``fee_quote`` is
    every commission of the fill valued in the quote currency (``None``: derive it from ``fee``,
    which is then in the quote currency or the coin)."""

    __slots__ = ()


class _OrderRejected(NamedTuple):
    ts: int
    client_order_id: str
    symbol: str
    side: str
    amount: float
    reason: str


class OrderRejected(_OrderRejected, Event):
    """An order was refused (by the exchange, the broker's filters or the balance)."""

    __slots__ = ()


# -- operator commands --------------------------------------------------------------------------


class _OperatorCommand(NamedTuple):
    ts: int
    by: str  # who asked: "cli", "telegram:<chat id>", ...


class PauseTrading(_OperatorCommand, Event):
    """Decide, but send no order until resumed."""

    __slots__ = ()


class ResumeTrading(_OperatorCommand, Event):
    """Send orders again; also clears a tripped kill switch."""

    __slots__ = ()


class FlattenPositions(_OperatorCommand, Event):
    """Sell every coin at the next decision, then halt until resumed (a manual kill switch)."""

    __slots__ = ()


OperatorCommand = PauseTrading | ResumeTrading | FlattenPositions
"""What an operator can ask the engine; applied in order at the start of the next step."""


class _PortfolioValued(NamedTuple):
    ts: int
    equity: float
    cash: float
    positions: tuple[tuple[str, float], ...]  # coin -> amount held
    prices: tuple[tuple[str, float], ...]  # coin -> last close used


class PortfolioValued(_PortfolioValued, Event):
    """Mark-to-market of the account at ``ts``: equity and cash in the quote currency, the coins
    held and the prices they were valued at."""

    __slots__ = ()

    def weights(self, quote: str) -> dict[str, float]:
        """Share of equity per asset, ``quote`` included (empty when equity <= 0)."""
        if self.equity <= 0:
            return {}
        prices = dict(self.prices)
        weights = {quote: self.cash / self.equity}
        for coin, amount in self.positions:
            weights[coin] = amount * prices.get(coin, 0.0) / self.equity
        return weights
