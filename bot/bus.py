"""The event bus: routes events by type to subscribed handlers, in publish order.

One bus instance carries both replay and live trading. Handlers are plain functions (strategies,
the portfolio vote, the planner: they never await) or callables returning awaitables (the edges
that do I/O: exchange executors, stores, Telegram). Both kinds are called in subscription order
for each event; whether a handler is async is decided by what it returns, so an object with an
``async __call__`` is awaited too.

Ordering guarantee: events are dispatched strictly in the order they were published. An event
emitted by a handler while another event is being dispatched is queued behind it, so every
subscriber sees event N before any subscriber sees event N+1. Several tasks may publish
concurrently (the live data loop, Telegram commands): one drains at a time, and ``publish``
returns only once its event has been dispatched.

A handler that raises stops the drain and the exception reaches whoever awaited ``publish``;
events still queued stay queued and are dispatched by the next ``publish``/``drain``. The backtest
wants that (fail loudly); the live driver catches at the cycle boundary.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from bot.events import Event

Handler = Callable[[Any], None] | Callable[[Any], Awaitable[None]]

# Set inside a drain: a publish from a handler only queues (the running drain delivers it).
_DISPATCHING: ContextVar[bool] = ContextVar("cryptorlpm_bus_dispatching", default=False)


class EventBus:
    """Type-routed, order-preserving event bus for sync and async handlers."""

    __slots__ = ("_cache", "_draining", "_queue", "_subscriptions", "_waiters", "listening")

    def __init__(self) -> None:
        self._subscriptions: list[tuple[type, Handler]] = []
        self.listening = False
        """Whether anyone subscribed at all (publishers skip building events nobody reads)."""
        self._cache: dict[type, tuple[Handler, ...]] = {}
        self._queue: deque[Event] = deque()
        self._draining = False
        self._waiters: list[asyncio.Future[None]] = []

    def subscribe(self, event_type: type[Event], handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every published event that is an instance of ``event_type``.

        Returns a function that removes this subscription.
        """
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"event_type must be an Event subclass, got {event_type!r}")
        entry = (event_type, handler)
        self._subscriptions.append(entry)
        self._cache.clear()
        self.listening = True

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)
                self._cache.clear()
                self.listening = bool(self._subscriptions)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Queue ``event`` without dispatching it; for synchronous handlers that produce events.

        The event is dispatched by the drain in progress, or by the next ``publish``/``drain``.
        """
        self._queue.append(event)

    async def publish(self, event: Event) -> None:
        """Queue ``event`` and dispatch everything queued, in order, before returning.

        Called from inside a handler, it only queues (the running drain delivers it).
        """
        self._queue.append(event)
        if not _DISPATCHING.get():
            await self.drain()

    async def drain(self) -> None:
        """Dispatch queued events until the queue is empty (one task at a time)."""
        if _DISPATCHING.get():
            return
        while self._draining:  # another task is draining: it will deliver our events too
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if not self._queue:
            return
        token = _DISPATCHING.set(True)
        self._draining = True
        queue, cache = self._queue, self._cache
        try:
            while queue:
                event = queue.popleft()
                route = cache.get(type(event))
                if route is None:
                    route = self._route(type(event))
                for handler in route:
                    result = handler(event)
                    if result is not None:
                        await result  # type: ignore[misc]
        finally:
            self._draining = False
            _DISPATCHING.reset(token)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    @property
    def pending(self) -> int:
        """Number of queued, not yet dispatched events."""
        return len(self._queue)

    def _route(self, event_type: type) -> tuple[Handler, ...]:
        route = tuple(
            handler
            for subscribed, handler in self._subscriptions
            if issubclass(event_type, subscribed)
        )
        self._cache[event_type] = route
        return route
