"""What one engine step reads, what a policy sees, and what the step returns.

An :class:`Instant` is a bar close on the exchange's clock: its time, the metrics that became
known since the previous instant and the bars that closed (several per coin after an outage, in
close order). Both drivers build instants with :func:`instants`, so a replay and the daemon feed
the engine the same things in the same order.

A policy is ``decide(context) -> weights | None`` (:class:`Policy`): it sees a
:class:`DecisionContext` (the instant, the account as it stands, a place for notes) and never the
bus, the exchange, the clock or the stores, so it cannot tell a backtest from live trading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from bot.events import Bar, Event, Metric, RiskRefusal, SubmitOrder, TargetWeights

if TYPE_CHECKING:
    from bot.engine.account import Account


class Instant(NamedTuple):
    """A bar close: ``ts``, the metrics known since the last instant, the bars that closed.

    ``decide`` is false for warm-up instants (before the decision window, or bars older than the
    current close after an outage): the policy's state follows them, no decision is taken.
    """

    ts: int
    metrics: tuple[Metric, ...]
    bars: tuple[Bar, ...]
    decide: bool = True


class DecisionContext:
    """What a policy sees at an instant: the instant itself and the account as it stands.

    ``account`` is read-only for policies (cash, ``holdings``, ``prices``, ``weights()``,
    ``equity()``): the coins actually held after fills, partial fills and refusals.
    :meth:`note` collects events the policy wants observers to see (module decisions,
    explanations); the engine publishes them after the step. A context is valid during the
    ``decide`` call it is passed to (the engine reuses one object from step to step).
    """

    __slots__ = ("account", "instant", "notes", "ts")

    def __init__(self, instant: Instant, account: Account) -> None:
        self.instant = instant
        self.ts = instant[0]
        self.account = account
        self.notes: list[Event] = []

    def reset(self, instant: Instant) -> None:
        """Point the context at the next instant (no notes yet)."""
        self.instant = instant
        self.ts = instant[0]
        if self.notes:
            self.notes = []

    @property
    def deciding(self) -> bool:
        """Whether this instant's answer is used (False while warming up)."""
        return self.instant[3]

    def note(self, event: Event) -> None:
        """Have ``event`` published to observers after the step."""
        self.notes.append(event)


@runtime_checkable
class Policy(Protocol):
    """Decides target weights. The paper's vote, the baselines and every later policy are one.

    ``decide`` is called at every instant, warm-up included (``context.deciding`` says whether
    the answer is used), so the policy's state follows every bar (a replay skips only the
    instants the policy declared quiet, below). It returns the wanted weights
    per asset (the quote currency's included or left to be the rest), or ``None`` for "no new
    target" (nothing is traded). ``name`` is the ``TargetWeights`` source.

    Optional hooks, called when present:

    * ``prepare(driver)``: a backtest hands the whole replay before replaying it;
    * ``quiet_instants(driver) -> bool array | None``: after ``prepare``, a policy that knows
      where it will not trade says so, and a replay coasts through those instants without
      calling it (:class:`Stretch`);
    * ``explain(ts) -> dict``: why the policy decided what it did at the close ``ts``, a
      JSON-ready dict keyed by what it explains, e.g. the Crypto Module vote's ``{coin:
      {action, q, top: [[input, attribution], ...], ...}}``; the live driver calls it after
      the cycle's orders are sent and journals it in ``decisions.explanation``; an ensemble
      adds its own keys, e.g. its controller's weights and its critics' vetoes. ``explain``
      must not change what the policy decides next.
    """

    name: str

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None: ...


class Stretch(NamedTuple):
    """Consecutive instants at which the policy declared it will not trade: a replay hands them
    to :meth:`~bot.engine.kernel.Engine.coast` at once instead of stepping each.

    A policy declares them with ``quiet_instants(driver)``: a boolean per instant of
    ``driver.instant_times()``, true where ``decide`` would answer ``None`` and where not being
    called leaves its later decisions unchanged (it read the replay in ``prepare``). Such an
    instant changes only the account's prices and the kill switch's view of equity; coasting
    computes both for the whole stretch, vectorised, with the bits stepping would give.
    """

    ts: np.ndarray
    """Close time of every instant (int64)."""
    deciding: np.ndarray
    """Whether each instant is in the decision window (bool): its valuation is recorded."""
    closes: Mapping[str, tuple[int, np.ndarray]]
    """Per coin with a bar in the stretch: ``(first, path)``, ``path[i]`` its latest close at
    instant ``i`` from ``i = first`` on (before ``first`` the coin has not closed a bar since
    the stretch began: the account's price holds)."""
    last_bars: tuple[Bar, ...]
    """The latest bar of each coin that closed one in the stretch (the account keeps them), in
    the order of the coins' first bars in it (the order stepping would first price them)."""
    instants: Callable[[], Iterator[Instant]]
    """The same instants, one by one: stepped when the stretch cannot coast."""


class StepResult(NamedTuple):
    """What one step decided: the target (``None``: no new target), the guardrails' refusals
    with their rules, the orders to send, and the policy's notes. ``equity`` is the account's
    mark-to-market at the instant, before any order. (A named tuple: a replay builds one per
    bar.)"""

    ts: int
    equity: float
    target: TargetWeights | None
    refusals: tuple[RiskRefusal, ...]
    orders: tuple[SubmitOrder, ...]
    notes: tuple[Event, ...] = ()
    allowed: tuple[tuple[str, float], ...] | None = None
    """The weights the guardrails allowed (``None``: nothing reviewed)."""
    trims: tuple[Any, ...] = ()
    """Orders the market's filters or the cash changed (:class:`bot.engine.planner.Trim`)."""


def target_weights(ts: int, wanted: Mapping[str, float], quote: str, source: str) -> TargetWeights:
    """``wanted`` as ``TargetWeights`` (sorted; the quote currency gets the rest when absent)."""
    weights = dict(wanted)
    if quote not in weights:
        weights[quote] = max(0.0, 1.0 - sum(weights.values()))
    return TargetWeights(ts, tuple(sorted(weights.items())), source)


def instants(
    bars: Iterable[Bar],
    metrics: Sequence[Metric] = (),
    *,
    decide_from: int | None = None,
    until: int | None = None,
    close_at: int | None = None,
) -> Iterator[Instant]:
    """Group ``bars`` (in close order) into instants, each carrying the metrics that became
    known by its close and not before the previous one.

    ``decide_from``: instants before it are warm-up (``decide=False``). ``until``: no instant
    at or after it (half-open windows); metrics known after the last instant are not yielded.
    ``close_at``: the last instant is at this close even when no bar closed then (the live
    cycle decides at its close whatever the exchange delivered; it carries the metrics left).
    The one function both drivers build instants with (the replay has its own vectorised
    twin, :func:`backtest.replay.ReplayDriver.instants`, checked equal by a test).
    """
    metric_iter = iter(sorted(metrics, key=_metric_order))
    pending = next(metric_iter, None)
    group: list[Bar] = []
    current: int | None = None

    def flush(ts: int) -> Instant:
        nonlocal pending
        known: list[Metric] = []
        while pending is not None and pending.ts <= ts:
            known.append(pending)
            pending = next(metric_iter, None)
        deciding = decide_from is None or ts >= decide_from
        return Instant(ts, tuple(known), tuple(group), deciding)

    for bar in bars:
        if until is not None and bar.ts >= until:
            break
        if current is not None and bar.ts != current:
            yield flush(current)
            group = []
        current = bar.ts
        group.append(bar)
    if current is not None and (close_at is None or current < close_at):
        yield flush(current)
        group = []
    if close_at is not None:
        yield flush(close_at)


def _metric_order(metric: Metric) -> tuple[int, str, str, int]:
    return (metric.ts, metric.asset, metric.name, metric.observed_at)
