"""The daemon's clock: the exchange's time, estimated locally and confirmed before acting.

Bars close on the exchange's clock, so the daemon wakes on it. Between syncs the clock runs
locally (``speed`` times the local monotonic clock: 1 in production, more against an accelerated
fake exchange); before :meth:`ExchangeTimeClock.sleep_until` returns it asks the exchange's time
(``GET /api/v3/time``, weight 1) and goes back to sleep if the exchange has not reached the
target yet. A local clock running ahead, a suspended host or an exchange whose clock is driven
by a test therefore never make the daemon act early.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.feed.exchange import describe_error

log = logging.getLogger(__name__)


class ExchangeTimeClock:
    """Exchange time = last server reading + local elapsed time x ``speed``."""

    def __init__(
        self,
        fetch_time: Callable[[], Awaitable[int]],
        *,
        speed: float = 1.0,
        max_sleep_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch_time = fetch_time
        self.speed = speed
        self.max_sleep_s = max_sleep_s
        self._monotonic = monotonic
        self._server_ms: int | None = None
        self._at = 0.0

    @property
    def synced(self) -> bool:
        """Whether the exchange's time has been read at least once."""
        return self._server_ms is not None

    async def sync(self) -> int:
        """Read the exchange's time and return it.

        The reading is taken as the time at the answer's arrival, without adding half the round
        trip: the estimate stays a time the exchange's clock has certainly reached, so the
        daemon can be late by a round trip, never early.
        """
        server = int(await self._fetch_time())
        self._server_ms = server
        self._at = self._monotonic()
        return server

    @property
    def reading_ms(self) -> int:
        """The exchange's time at the last :meth:`sync`: a time its clock has certainly
        reached, whatever the local clock did since (call :meth:`sync` first)."""
        if self._server_ms is None:
            raise RuntimeError("the exchange clock was never synced")
        return self._server_ms

    def now_ms(self) -> int:
        """The exchange's time as estimated now (call :meth:`sync` first)."""
        if self._server_ms is None:
            raise RuntimeError("the exchange clock was never synced")
        return self._server_ms + int((self._monotonic() - self._at) * 1000 * self.speed)

    async def sleep_until(
        self, ts_ms: int, stop: asyncio.Event | None = None, *, confirm: bool = True
    ) -> bool:
        """Return True once the exchange's clock reached ``ts_ms``; False if ``stop`` was set.

        Sleeps in slices of at most ``max_sleep_s``. The exchange's time is read when the local
        estimate says the target is reached (to confirm it) and after every slice that follows
        ``max_sleep_s`` without a reading, so a local clock running slow or fast, a suspended
        host or an exchange clock driven by a test are noticed within a slice. A failed read is
        retried after a slice (logged), never treated as "reached". ``confirm=False`` trusts
        the local estimate and reads nothing (while the exchange must not be asked: a ban).
        """
        if self._server_ms is None:
            await self.sync()
        while True:
            remaining = ts_ms - self.now_ms()
            if remaining <= 0 and not confirm:
                return True
            stale = self._monotonic() - self._at >= self.max_sleep_s
            if confirm and (remaining <= 0 or stale):
                try:
                    if await self.sync() >= ts_ms:
                        return True
                except Exception as exc:
                    log.log(
                        logging.WARNING if remaining <= 0 else logging.DEBUG,
                        "cannot read the exchange's time: %s",
                        describe_error(exc),
                    )
                remaining = max(ts_ms - self.now_ms(), 50 * self.speed)
            delay = min(remaining / 1000 / self.speed, self.max_sleep_s)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return False
                except TimeoutError:
                    pass
