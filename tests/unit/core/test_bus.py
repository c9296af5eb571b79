"""The bus routes by type, keeps publish order, and mixes sync and async handlers."""

from __future__ import annotations

import pytest

from bot.bus import EventBus
from bot.events import Bar, Event, Metric, PauseTrading


def make_bar(ts: int, symbol: str = "BTC/USDT") -> Bar:
    return Bar(ts, "x", symbol, "1h", ts - 3_600_000, 1.0, 2.0, 0.5, 1.5, 10.0)


async def test_events_reach_only_handlers_of_their_type() -> None:
    bus = EventBus()
    bars: list[Event] = []
    metrics: list[Event] = []
    bus.subscribe(Bar, bars.append)
    bus.subscribe(Metric, metrics.append)
    await bus.publish(make_bar(1))
    await bus.publish(Metric(2, "BTC", "active_addresses", 0, 5.0))
    assert [type(e) for e in bars] == [Bar]
    assert [type(e) for e in metrics] == [Metric]


async def test_base_class_subscription_sees_every_event() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(Event, seen.append)
    await bus.publish(make_bar(1))
    await bus.publish(PauseTrading(2, "test"))
    assert [e.ts for e in seen] == [1, 2]


async def test_events_emitted_by_handlers_queue_behind_the_current_event() -> None:
    bus = EventBus()
    log: list[str] = []

    def first(bar: Bar) -> None:
        log.append(f"first:{bar.ts}")
        if bar.ts == 1:
            bus.emit(PauseTrading(99, "test"))

    def second(bar: Bar) -> None:
        log.append(f"second:{bar.ts}")

    bus.subscribe(Bar, first)
    bus.subscribe(Bar, second)
    bus.subscribe(PauseTrading, lambda e: log.append(f"heartbeat:{e.ts}"))
    await bus.publish(make_bar(1))
    assert log == ["first:1", "second:1", "heartbeat:99"]


async def test_async_and_sync_handlers_run_in_subscription_order() -> None:
    bus = EventBus()
    log: list[str] = []

    async def slow(event: Bar) -> None:
        log.append("async")

    bus.subscribe(Bar, lambda e: log.append("sync-1"))
    bus.subscribe(Bar, slow)
    bus.subscribe(Bar, lambda e: log.append("sync-2"))
    await bus.publish(make_bar(1))
    assert log == ["sync-1", "async", "sync-2"]


async def test_unsubscribe_stops_delivery() -> None:
    bus = EventBus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe(Bar, seen.append)
    await bus.publish(make_bar(1))
    unsubscribe()
    await bus.publish(make_bar(2))
    assert [e.ts for e in seen] == [1]


async def test_handler_error_propagates_and_keeps_later_events_queued() -> None:
    bus = EventBus()
    seen: list[int] = []

    def handler(bar: Bar) -> None:
        if bar.ts == 1:
            bus.emit(make_bar(2))
            raise RuntimeError("boom")
        seen.append(bar.ts)

    bus.subscribe(Bar, handler)
    with pytest.raises(RuntimeError, match="boom"):
        await bus.publish(make_bar(1))
    assert bus.pending == 1
    await bus.drain()
    assert seen == [2]


def test_listening_says_whether_anyone_subscribed() -> None:
    bus = EventBus()
    assert not bus.listening
    unsubscribe = bus.subscribe(Bar, print)
    assert bus.listening
    unsubscribe()
    assert not bus.listening


def test_subscribe_rejects_non_event_types() -> None:
    with pytest.raises(TypeError):
        EventBus().subscribe(int, print)  # type: ignore[arg-type]


def test_events_are_frozen() -> None:
    bar = make_bar(1)
    with pytest.raises(AttributeError):
        bar.close = 3.0  # type: ignore[misc]


async def test_an_object_with_async_call_is_awaited() -> None:
    bus = EventBus()
    seen: list[int] = []

    class Edge:
        async def __call__(self, event: Bar) -> None:
            seen.append(event.ts)

    bus.subscribe(Bar, Edge())
    await bus.publish(make_bar(1))
    assert seen == [1]


async def test_concurrent_publishers_each_return_after_their_event_is_delivered() -> None:
    import asyncio

    bus = EventBus()
    seen: list[int] = []
    release = asyncio.Event()

    async def slow(event: Bar) -> None:
        if event.ts == 1:
            await release.wait()
        seen.append(event.ts)

    bus.subscribe(Bar, slow)
    first = asyncio.create_task(bus.publish(make_bar(1)))
    await asyncio.sleep(0)
    second = asyncio.create_task(bus.publish(make_bar(2)))
    await asyncio.sleep(0)
    assert not second.done()  # it waits for the running drain instead of returning early
    release.set()
    await asyncio.gather(first, second)
    assert seen == [1, 2]
    assert bus.pending == 0


async def test_an_async_handler_publishing_from_inside_a_drain_only_queues() -> None:
    bus = EventBus()
    log: list[str] = []

    async def on_bar(event: Bar) -> None:
        log.append(f"bar:{event.ts}")
        await bus.publish(PauseTrading(event.ts + 1, "test"))
        log.append("after-publish")

    bus.subscribe(Bar, on_bar)
    bus.subscribe(PauseTrading, lambda e: log.append(f"heartbeat:{e.ts}"))
    await bus.publish(make_bar(1))
    assert log == ["bar:1", "after-publish", "heartbeat:2"]
