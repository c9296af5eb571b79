"""The send-rate limiter and the bounded alert queue."""

from __future__ import annotations

import itertools

import pytest

from bot.telegram.outbox import Outbox, Outgoing, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_one_chat_is_spaced_by_its_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_chat_per_s=1.0, global_per_s=30.0, clock=clock)
    assert limiter.wait_s(1) == 0.0
    limiter.record(1)
    assert limiter.wait_s(1) == pytest.approx(1.0)
    clock.now += 0.4
    assert limiter.wait_s(1) == pytest.approx(0.6)
    clock.now += 0.6
    assert limiter.wait_s(1) == 0.0


def test_other_chats_only_wait_for_the_global_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_chat_per_s=1.0, global_per_s=10.0, clock=clock)
    limiter.record(1)
    assert limiter.wait_s(2) == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.wait_s(2) == 0.0
    assert limiter.wait_s(1) == pytest.approx(0.9)


def test_a_block_holds_every_chat_until_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_chat_per_s=100.0, global_per_s=100.0, clock=clock)
    limiter.block(3.0)
    assert limiter.wait_s(1) == pytest.approx(3.0)
    assert limiter.wait_s(2) == pytest.approx(3.0)
    limiter.block(1.0)  # a shorter block never shortens a longer one
    clock.now += 3.0
    assert limiter.wait_s(1) == 0.0


def test_sustained_sending_never_beats_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_chat_per_s=2.0, global_per_s=30.0, clock=clock)
    sends = []
    for _ in range(10):
        clock.now += limiter.wait_s(7)
        limiter.record(7)
        sends.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert min(gaps) == pytest.approx(0.5)


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0, 1.0)


def test_full_queue_drops_the_oldest_and_counts() -> None:
    box = Outbox(3)
    for i in range(5):
        box.put(Outgoing(1, f"m{i}"))
    assert [item.text for item in box] == ["m2", "m3", "m4"]
    assert box.dropped == 2
    assert len(box) == 3


def test_a_message_put_back_goes_first_unless_the_queue_filled_meanwhile() -> None:
    box = Outbox(3)
    box.put(Outgoing(1, "a"))
    box.put(Outgoing(1, "b"))
    head = box.pop()
    assert box.put_back(head)
    assert [item.text for item in box] == ["a", "b"]
    head = box.pop()
    box.put(Outgoing(1, "c"))
    box.put(Outgoing(1, "d"))
    assert not box.put_back(head)  # it was the oldest: it is the one dropped
    assert [item.text for item in box] == ["b", "c", "d"]
    assert box.dropped == 1


def test_peek_and_pop() -> None:
    box = Outbox(2)
    assert box.peek() is None
    box.put(Outgoing(1, "a"))
    assert box.peek() is not None and box.peek().text == "a"
    assert box.pop().text == "a"
    with pytest.raises(IndexError):
        box.pop()
