"""The alert queue and the send-rate limiter: pure bookkeeping, no I/O, an injectable clock.

Telegram allows about one message a second to a chat and about thirty a second overall, and
answers 429 with ``retry_after`` beyond that. :class:`RateLimiter` spaces sends so that limit is
seldom hit, and :meth:`RateLimiter.block` holds every send after a 429. :class:`Outbox` is the
bounded FIFO between the trading code and the sender: putting never blocks, and when it is full
the oldest message is dropped and counted (a fresh alert matters more than an old one).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(slots=True)
class Outgoing:
    """One message for one chat. ``photo``: PNG bytes, or a function that renders them (run in
    a worker thread by the sender, so a chart never costs the trading loop anything)."""

    chat_id: int
    text: str
    photo: bytes | Callable[[], bytes] | None = None
    kind: str = "notice"


class RateLimiter:
    """Minimum spacing between sends: ``1/per_chat_per_s`` to one chat, ``1/global_per_s``
    overall, and nothing at all before a 429's deadline."""

    def __init__(self, per_chat_per_s: float, global_per_s: float, clock: Clock = time.monotonic):
        if per_chat_per_s <= 0 or global_per_s <= 0:
            raise ValueError("rates must be positive")
        self._chat_gap = 1.0 / per_chat_per_s
        self._global_gap = 1.0 / global_per_s
        self._clock = clock
        self._next_chat: dict[int, float] = {}
        self._next_any = float("-inf")
        self._blocked_until = float("-inf")

    def wait_s(self, chat_id: int) -> float:
        """Seconds to wait before a send to ``chat_id`` is allowed (0: now)."""
        now = self._clock()
        ready = max(self._next_chat.get(chat_id, now), self._next_any, self._blocked_until)
        return max(0.0, ready - now)

    def record(self, chat_id: int) -> None:
        """A send to ``chat_id`` happened now."""
        now = self._clock()
        self._next_chat[chat_id] = now + self._chat_gap
        self._next_any = now + self._global_gap

    def block(self, seconds: float) -> None:
        """Allow no send for ``seconds`` (Telegram's ``retry_after``)."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)


class Outbox:
    """Bounded FIFO of :class:`Outgoing`; full means the oldest is dropped and counted."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[Outgoing] = deque()

    def put(self, item: Outgoing) -> Outgoing | None:
        """Append ``item``; returns the message dropped to make room, if any."""
        dropped = None
        if len(self._items) >= self.maxsize:
            dropped = self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        return dropped

    def put_back(self, item: Outgoing) -> bool:
        """Return a message that could not be sent to the front; it is the oldest, so a full
        queue drops it (counted). Returns whether it was kept."""
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return False
        self._items.appendleft(item)
        return True

    def discard(self, chat_id: int) -> int:
        """Remove every queued message for ``chat_id`` (a chat that takes no more messages);
        returns how many. Not counted as dropped: the caller counts them as failed."""
        kept = deque(item for item in self._items if item.chat_id != chat_id)
        removed = len(self._items) - len(kept)
        self._items = kept
        return removed

    def discard_all(self) -> int:
        """Remove every queued message; returns how many (counted by the caller)."""
        removed = len(self._items)
        self._items.clear()
        return removed

    def readdress(self, old: int, new: int) -> None:
        """Send the queued messages for chat ``old`` to ``new`` instead (a migrated group)."""
        for item in self._items:
            if item.chat_id == old:
                item.chat_id = new

    def pop(self) -> Outgoing:
        """Remove and return the oldest message (``IndexError`` when empty)."""
        return self._items.popleft()

    def peek(self) -> Outgoing | None:
        """The oldest message, left in place."""
        return self._items[0] if self._items else None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(tuple(self._items))
