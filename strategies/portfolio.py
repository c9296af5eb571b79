"""The portfolio vote over plugged Crypto Modules: the policy the engine runs.

Each Crypto Module ``i`` decides a weight pair ``d_t^i = [cash, coin]`` at every close of its
coin's bar (a :class:`~bot.events.ModuleDecision`). Placed in the portfolio's vector (cash,
coin_1, ..., coin_m), ``d_t^i`` puts its cash weight on cash and its coin weight on coin ``i``;
the portfolio weights are the vote

    ``w_t = sum_i d_t^i / m``

over the ``m`` plugged modules: each coin gets 0 or ``1 / m``, and cash the rest. The vote is
taken when the driver says every bar of ``t`` is in (:class:`~bot.events.BarsClosed`) and is
emitted as :class:`~bot.events.TargetWeights` with source ``"vote"``.

:class:`PortfolioVote` follows the engine's ``Policy`` protocol (``attach(bus)``). It hands each
``Bar`` and ``Metric`` to the plugged modules itself, in plug order, rather than subscribing them
to the bus, so their decisions are known before the vote whatever the bus queues; each decision
is also emitted, for the logs. Modules can be plugged, unplugged and replaced at run time (from a
handler, between events, or from the daemon's control service); ``m`` is the number plugged when
the vote is taken, so it renormalises by itself. A module that is warming up, or has not decided
yet, votes all cash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bot.bus import EventBus
from bot.events import Bar, BarsClosed, Event, Metric, ModuleDecision, TargetWeights

VOTE_SOURCE = "vote"


class Module(Protocol):
    """What the vote needs of a module (:class:`strategies.crypto_module.CryptoModule`)."""

    @property
    def coin(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    def decide(self, bar: Bar) -> ModuleDecision | None: ...

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

    def __init__(self, quote: str = "USDT", modules: list[Module] | tuple[Module, ...] = ()):
        self.quote = quote
        self._modules: dict[str, Module] = {}
        self._latest: dict[str, ModuleDecision] = {}
        self._emit: Callable[[Event], None] = lambda event: None
        for module in modules:
            self.plug(module)

    def attach(self, bus: EventBus) -> None:
        """Read bars and metrics, vote at every ``BarsClosed``; emit through ``bus.emit``."""
        self._emit = bus.emit
        bus.subscribe(Metric, self.on_metric)
        bus.subscribe(Bar, self.on_bar)
        bus.subscribe(BarsClosed, self.on_bars_closed)

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

    def unplug(self, coin: str) -> Module:
        """Remove the module of ``coin`` and return it; the next votes are over the others."""
        if coin not in self._modules:
            raise KeyError(f"no Crypto Module plugged for {coin}; plugged: {list(self._modules)}")
        self._latest.pop(coin, None)
        return self._modules.pop(coin)

    def replace(self, module: Module) -> Module:
        """Swap in ``module`` for its coin, keeping the coin's place; returns the old module."""
        if module.coin not in self._modules:
            raise KeyError(f"no Crypto Module plugged for {module.coin}; use plug")
        old = self._modules[module.coin]
        self._modules[module.coin] = module
        self._latest.pop(module.coin, None)
        return old

    def latest(self, coin: str) -> ModuleDecision | None:
        """The last decision of ``coin``'s module (None before its first, or once unplugged)."""
        return self._latest.get(coin)

    def on_metric(self, metric: Metric) -> None:
        """Hand a metric to every plugged module."""
        for module in tuple(self._modules.values()):
            module.on_metric(metric)

    def on_bar(self, bar: Bar) -> None:
        """Hand a bar to every plugged module; remember and emit their decisions."""
        for coin, module in tuple(self._modules.items()):
            decision = module.decide(bar)
            if decision is not None:
                self._latest[coin] = decision
                self._emit(decision)

    def weights(self) -> tuple[tuple[str, float], ...]:
        """The vote over the plugged modules' latest decisions."""
        pairs = {
            coin: (d.cash, d.coin_weight) if (d := self._latest.get(coin)) else (1.0, 0.0)
            for coin in self._modules
        }
        return vote(pairs, self.quote)

    def on_bars_closed(self, event: BarsClosed) -> None:
        """Every bar of ``event.ts`` is in: emit the vote as target weights."""
        self._emit(TargetWeights(event.ts, self.weights(), VOTE_SOURCE))
