"""The event bus: routes events by type to subscribed handlers, in publish order.

One bus instance carries both replay and live trading. Handlers are either plain functions
(strategies, the portfolio vote, the risk gate: they never await) or coroutine functions (the
edges that do I/O: exchange executors, stores, Telegram). Both kinds are called in subscription
order for each event.

Ordering guarantee: events are dispatched strictly in the order they were published. An event
emitted by a handler while another event is being dispatched is queued behind it, so every
subscriber sees event N before any subscriber sees event N+1.

A handler that raises stops the drain and the exception reaches whoever awaited ``publish``;
events still queued stay queued and are dispatched by the next ``publish``/``drain``. The backtest
wants that (fail loudly); the live driver catches at the cycle boundary.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from bot.events import Event

Handler = Callable[[Any], None] | Callable[[Any], Awaitable[None]]
_Route = tuple[tuple[Handler, bool], ...]


class EventBus:
    """Type-routed, order-preserving event bus for sync and async handlers."""

    __slots__ = ("_cache", "_draining", "_queue", "_subscriptions")

    def __init__(self) -> None:
        self._subscriptions: list[tuple[type, Handler, bool]] = []
        self._cache: dict[type, _Route] = {}
        self._queue: deque[Event] = deque()
        self._draining = False

    def subscribe(self, event_type: type[Event], handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every published event that is an instance of ``event_type``.

        Returns a function that removes this subscription.
        """
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"event_type must be an Event subclass, got {event_type!r}")
        entry = (event_type, handler, inspect.iscoroutinefunction(handler))
        self._subscriptions.append(entry)
        self._cache.clear()

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)
                self._cache.clear()

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
        if not self._draining:
            await self.drain()

    async def drain(self) -> None:
        """Dispatch queued events until the queue is empty."""
        if self._draining:
            return
        self._draining = True
        queue, cache = self._queue, self._cache
        try:
            while queue:
                event = queue.popleft()
                route = cache.get(type(event))
                if route is None:
                    route = self._route(type(event))
                for handler, is_async in route:
                    if is_async:
                        await handler(event)  # type: ignore[misc]
                    else:
                        handler(event)
        finally:
            self._draining = False

    def publish_sync(self, event: Event) -> None:
        """Dispatch ``event`` (and what it causes) without an event loop.

        Only valid while every handler of the events involved is synchronous; a fast path for
        replays and tools that have no async edge. Raises ``TypeError`` otherwise.
        """
        queue, cache = self._queue, self._cache
        queue.append(event)
        if self._draining:
            return
        self._draining = True
        try:
            while queue:
                event = queue.popleft()
                route = cache.get(type(event))
                if route is None:
                    route = self._route(type(event))
                for handler, is_async in route:
                    if is_async:
                        raise TypeError(
                            f"publish_sync: handler {handler!r} for {type(event).__name__} is async"
                        )
                    handler(event)
        finally:
            self._draining = False

    @property
    def pending(self) -> int:
        """Number of queued, not yet dispatched events."""
        return len(self._queue)

    def _route(self, event_type: type) -> _Route:
        route = tuple(
            (handler, is_async)
            for subscribed, handler, is_async in self._subscriptions
            if issubclass(event_type, subscribed)
        )
        self._cache[event_type] = route
        return route
