"""Alert queueing: which events become alerts, and a full queue drops the oldest."""

from __future__ import annotations

import time

from bot.bus import EventBus
from bot.events import OrderFilled, OrderRejected, RiskRefusal
from bot.telegram import TelegramAlerts
from config.schema import TelegramConfig

UNREACHABLE = "http://127.0.0.1:9"  # never contacted: these alerts are never started
TS = 1_704_191_400_000


def alerts(**settings: object) -> TelegramAlerts:
    config = TelegramConfig(api_url=UNREACHABLE, **{"chat_ids": (1,), **settings})  # type: ignore[arg-type]
    return TelegramAlerts(config, "1:x")


def fill() -> OrderFilled:
    return OrderFilled(TS, "c", "BTC/USDT", "buy", 0.1, 43_000.0, 4.3, "USDT")


def test_a_full_queue_drops_the_oldest_and_counts() -> None:
    sender = alerts(queue_size=3)
    for i in range(5):
        sender.notify(f"m{i}")
    stats = sender.stats
    assert (stats.queued, stats.dropped, stats.sent) == (3, 2, 0)


def test_every_chat_gets_its_copy() -> None:
    sender = alerts(chat_ids=(1, 2))
    sender.error("disk full")
    assert sender.stats.queued == 2


def test_without_chats_nothing_is_queued() -> None:
    sender = alerts(chat_ids=())
    sender.notify("hello")
    assert sender.stats.queued == 0


async def test_fill_and_refusal_alerts_follow_the_settings() -> None:
    bus = EventBus()
    sender = alerts(alert_fills=False, alert_refusals=False)
    sender.attach(bus)
    await bus.publish(fill())
    await bus.publish(RiskRefusal(TS, "max_weight", "BTC", 0.6, 0.4, ""))
    assert sender.stats.queued == 0
    await bus.publish(OrderRejected(TS, "c", "BTC/USDT", "buy", 0.1, "insufficient balance"))
    assert sender.stats.queued == 1  # rejections are always reported
    sender.detach()
    await bus.publish(fill()._replace(ts=TS + 1))
    assert sender.stats.queued == 1


async def test_a_broken_event_never_breaks_the_publisher() -> None:
    bus = EventBus()
    sender = alerts()
    sender.attach(bus)
    await bus.publish(OrderFilled(TS, "c", "BTC/USDT", "buy", None, 1.0, 0.0, "USDT"))  # type: ignore[arg-type]
    assert sender.stats.queued == 0


def test_enqueueing_is_fast_and_never_blocks() -> None:
    sender = alerts(queue_size=50)
    durations = []
    for i in range(1_000):
        start = time.perf_counter()
        sender.notify(f"message {i}")
        durations.append(time.perf_counter() - start)
    durations.sort()
    assert durations[len(durations) // 2] < 100e-6
    assert sender.stats.dropped == 950
