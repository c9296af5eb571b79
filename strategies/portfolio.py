"""The portfolio vote over plugged Crypto Modules: the policy the engine runs.

Each Crypto Module ``i`` decides a weight pair ``d_t^i = [cash, coin]`` at every close of its
coin's bar (a :class:`~bot.events.ModuleDecision`). Placed in the portfolio's vector (cash,
coin_1, ..., coin_m), ``d_t^i`` puts its cash weight on cash and its coin weight on coin ``i``;
the portfolio weights are the vote

    ``w_t = sum_i d_t^i / m``

over the ``m`` plugged modules: each coin gets 0 or ``1 / m``, and cash the rest. The vote is
taken at every instant the engine steps through (its ``TargetWeights`` source is ``"vote"``).

:class:`PortfolioVote` is an engine :class:`~bot.engine.step.Policy` (``decide(context)``): it
hands the instant's metrics and bars to the plugged modules, in plug order, notes each module's
decision for observers, and answers the vote. Each module's SAM reads the position the account
actually holds in its coin (its sleeve of ``1 / m`` held at least half: position 1), not its own
last action, so a refused or partial order is seen as what it is. Modules can be plugged,
unplugged and replaced at run time (between two steps, from the daemon's control service);
``m`` is the number plugged when the vote is taken, so it renormalises by itself. A module that
is warming up, or has not decided yet, votes all cash.

Before a replay, :meth:`PortfolioVote.prepare` hands each module the bars and metrics it will
read (a backtest's whole replay, or a fold's share of it), so that a Crypto Module computes its
decisions in a few batched forward passes; ``decide`` is unchanged and each module still reads
the position the account holds, bar by bar, so the decisions are the bar-by-bar path's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from bot.engine.account import Account
from bot.engine.step import DecisionContext
from bot.events import Bar, Metric, ModuleDecision
from strategies.plans import ReplayHistory, prepare_modules

VOTE_SOURCE = "vote"


class Module(Protocol):
    """What the vote needs of a module (:class:`strategies.crypto_module.CryptoModule`)."""

    @property
    def coin(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None: ...

    def on_metric(self, metric: Metric) -> None: ...


def vote(pairs: dict[str, tuple[float, float]], quote: str) -> tuple[tuple[str, float], ...]:
    """``w = sum_i d^i / m`` over ``pairs`` (coin -> ``(cash, coin)`` weights of its module), as
    ``((quote, w_cash), (coin_1, w_1), ...)``; all cash when no module is plugged."""
    m = len(pairs)
    if m == 0:
        return ((quote, 1.0),)
    cash = sum(d[0] for d in pairs.values()) / m
    return ((quote, cash), *((coin, d[1] / m) for coin, d in pairs.items()))


class PortfolioVote:
    """The plugged Crypto Modules and their vote; an engine policy."""

    name = VOTE_SOURCE

    def __init__(self, quote: str = "USDT", modules: list[Module] | tuple[Module, ...] = ()):
        self.quote = quote
        self._modules: dict[str, Module] = {}
        self._latest: dict[str, ModuleDecision] = {}
        # Which modules read a bar of a symbol, in plug order (a module with a ``symbol`` reads
        # only its bars), and per module, in plug order, what takes an instant's metrics (its
        # ``on_metrics``, or its ``on_metric`` for each it reads); rebuilt whenever the modules
        # change.
        self._bar_readers: dict[str, tuple[tuple[str, Module], ...]] = {}
        self._metric_takers: tuple[Callable[[Sequence[Metric]], None], ...] = ()
        for module in modules:
            self.plug(module)

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        """Feed the instant to the modules, note their decisions, answer the vote."""
        instant = context.instant
        if instant.metrics:
            self.on_metrics(instant.metrics)
        if instant.bars:
            positions = self.held_positions(context.account)
            latest, note = self._latest, context.notes.append  # context.note, unwrapped
            for bar in instant.bars:
                readers = self._bar_readers.get(bar[2])  # its symbol
                for coin, module in self._bar_readers_of(bar[2]) if readers is None else readers:
                    decision = module.decide(bar, positions.get(coin, 0.0))
                    if decision is not None:
                        latest[coin] = decision
                        note(decision)
        return self.vote_weights() if context.deciding else None

    def prepare(
        self, replay: ReplayHistory, *, after: int | None = None, before: int | None = None
    ) -> int:
        """Before a replay: each plugged module that can (a Crypto Module that has read
        nothing) computes its decisions at all the bars it will read, in a few batched passes;
        returns how many did. ``after``/``before``: only events stamped in ``(after, before)``
        are read (a fold's modules read no others). Modules plugged later decide bar by bar.
        When no module can (all have read something: a replay prepared before it started),
        nothing of the replay is read."""
        return prepare_modules(self._modules.values(), replay, after=after, before=before)

    def explain(self, ts: int) -> dict[str, Any]:
        """Why each module decided what it did at the close ``ts`` (the policy's optional
        ``explain`` hook, :class:`~bot.engine.step.Policy`): ``{coin: explanation}``
        (:meth:`strategies.explain.Explanation.to_dict`) of the modules whose last decision,
        taken from their networks bar by bar, is at ``ts``; the others are left out."""
        from strategies.explain import explain_decision

        out: dict[str, Any] = {}
        for coin, module in self._modules.items():
            inputs = getattr(module, "last_inputs", None)
            if inputs is None or inputs.ts != ts:
                continue
            explained = explain_decision(module)  # type: ignore[arg-type]
            if explained is not None:
                out[coin] = explained.to_dict()
        return out

    def positions(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Each module's position as the account holds it: 1 when at least half of its sleeve
        (``1 / m`` of equity) is in its coin, else 0."""
        m = len(self._modules)
        return {coin: float(weights.get(coin, 0.0) * m >= 0.5) for coin in self._modules}

    def held_positions(self, account: Account) -> dict[str, float]:
        """:meth:`positions` of ``account.weights()`` (the same arithmetic), for the coins held
        only (the others hold 0; read them with ``.get(coin, 0.0)``): no weights built for
        coins the account does not hold."""
        if not account.holdings:
            return {}
        equity = account.equity()
        if equity <= 0:
            return {}
        m, prices, modules = len(self._modules), account.prices, self._modules
        return {
            coin: float(amount * prices.get(coin, 0.0) / equity * m >= 0.5)
            for coin, amount in account.holdings.items()
            if coin in modules
        }

    @property
    def coins(self) -> tuple[str, ...]:
        """Coins of the plugged modules, in plug order."""
        return tuple(self._modules)

    def module(self, coin: str) -> Module:
        """The module plugged for ``coin``."""
        return self._modules[coin]

    def plug(self, module: Module) -> None:
        """Add a module (warm it up first to have it vote at once); one module per coin."""
        if module.coin in self._modules:
            raise ValueError(f"a Crypto Module for {module.coin} is already plugged; use replace")
        self._modules[module.coin] = module
        self._changed()

    def unplug(self, coin: str) -> Module:
        """Remove the module of ``coin`` and return it; the next votes are over the others."""
        if coin not in self._modules:
            raise KeyError(f"no Crypto Module plugged for {coin}; plugged: {list(self._modules)}")
        self._latest.pop(coin, None)
        removed = self._modules.pop(coin)
        self._changed()
        return removed

    def replace(self, module: Module) -> Module:
        """Swap in ``module`` for its coin, keeping the coin's place; returns the old module."""
        if module.coin not in self._modules:
            raise KeyError(f"no Crypto Module plugged for {module.coin}; use plug")
        old = self._modules[module.coin]
        self._modules[module.coin] = module
        self._latest.pop(module.coin, None)
        self._changed()
        return old

    def _changed(self) -> None:
        self._bar_readers.clear()
        self._metric_takers = ()

    def latest(self, coin: str) -> ModuleDecision | None:
        """The last decision of ``coin``'s module (None before its first, or once unplugged)."""
        return self._latest.get(coin)

    def on_metric(self, metric: Metric) -> None:
        """Hand a metric to every plugged module that reads it (all but those whose
        ``metric_keys`` leave it out)."""
        self.on_metrics((metric,))

    def on_metrics(self, metrics: Sequence[Metric]) -> None:
        """Hand metrics (an instant's, in order) to every plugged module, in plug order, each
        in one call (:func:`_metric_taker`)."""
        takers = self._metric_takers
        if not takers:
            takers = self._metric_takers = tuple(map(_metric_taker, self._modules.values()))
        for take in takers:
            take(metrics)

    def _bar_readers_of(self, symbol: str) -> tuple[tuple[str, Module], ...]:
        readers = self._bar_readers[symbol] = tuple(
            (coin, module)
            for coin, module in self._modules.items()
            if getattr(module, "symbol", symbol) == symbol
        )
        return readers

    def on_bar(
        self, bar: Bar, positions: Mapping[str, float] | None = None
    ) -> list[ModuleDecision]:
        """Hand a bar to every plugged module (with the position the account holds in its
        coin, when known); remember and return their decisions."""
        decisions = []
        readers = self._bar_readers.get(bar.symbol)
        for coin, module in self._bar_readers_of(bar.symbol) if readers is None else readers:
            position = None if positions is None else positions.get(coin, 0.0)
            decision = module.decide(bar, position)
            if decision is not None:
                self._latest[coin] = decision
                decisions.append(decision)
        return decisions

    def vote_weights(self) -> dict[str, float]:
        """The vote over the plugged modules' latest decisions, ``{asset: weight}``: the quote
        first, then the coins in plug order; :func:`vote`'s arithmetic, in one pass (a module
        that has not decided votes all cash)."""
        m = len(self._modules)
        if m == 0:
            return {self.quote: 1.0}
        latest = self._latest
        cash: list[float] = []
        coins = {}
        for coin in self._modules:
            d = latest.get(coin)
            if d is None:
                cash.append(1.0)
                coins[coin] = 0.0 / m
            else:
                cash.append(d[3])
                coins[coin] = d[4] / m
        # sum(), as vote() adds them: from Python 3.12 it compensates float sums
        return {self.quote: sum(cash) / m, **coins}

    def weights(self) -> tuple[tuple[str, float], ...]:
        """:meth:`vote_weights` as ``((asset, weight), ...)``."""
        return tuple(self.vote_weights().items())


def _metric_taker(module: Module) -> Callable[[Sequence[Metric]], None]:
    """What hands ``module`` an instant's metrics: its ``on_metrics`` when it has one (a
    Crypto Module), else its ``on_metric`` for each metric it reads (all, without
    ``metric_keys``)."""
    bulk = getattr(module, "on_metrics", None)
    if bulk is not None:
        return bulk  # type: ignore[no-any-return]
    keys = getattr(module, "metric_keys", None)

    def take(metrics: Sequence[Metric]) -> None:
        for metric in metrics:
            if keys is None or (metric.asset, metric.name) in keys:
                module.on_metric(metric)

    return take
