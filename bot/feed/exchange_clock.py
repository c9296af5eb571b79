"""The exchange's clock, read through the local one.

Whether a candle has closed is the exchange's call, made on the exchange's clock. A local clock
that runs ahead (NTP drift, a laptop waking from sleep) would otherwise declare a candle closed
while the exchange is still filling it. :class:`ExchangeClock` measures the offset between the
two with ``fetch_time()`` (Binance ``GET /api/v3/time``) and adds it to the local clock.

The reading is a *lower bound* of the exchange's time: the server stamped its time somewhere
between sending the request and receiving the answer, and the offset assumes the latest possible
moment. So a candle the clock calls closed has closed on the exchange; at worst a close is
recognised one round trip late. The offset is measured again every ``resync_s`` seconds, as
clocks drift.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bot.feed.retry import DEFAULT_MAX_WAIT_S, call_with_retries, retry_after_from

log = logging.getLogger(__name__)


class ExchangeClock:
    """Local clock plus the measured exchange offset.

    ``local_ms`` is the local clock (epoch ms); ``monotonic`` (seconds) times the resyncs.
    Until the first :meth:`sync` succeeds, :meth:`now_ms` is ``None``.
    """

    def __init__(
        self,
        exchange: Any,
        local_ms: Callable[[], int],
        *,
        resync_s: float = 600.0,
        warn_offset_ms: int = 1_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exchange = exchange
        self._local_ms = local_ms
        self._monotonic = monotonic
        self.resync_s = resync_s
        self.warn_offset_ms = warn_offset_ms
        self.offset_ms: int | None = None
        """Exchange time minus local time (a lower bound), ``None`` before the first sync."""
        self._synced_at: float | None = None

    @property
    def synced(self) -> bool:
        """Whether an offset has been measured."""
        return self.offset_ms is not None

    def due(self) -> bool:
        """Whether the offset is missing or older than ``resync_s``."""
        return self._synced_at is None or self._monotonic() - self._synced_at >= self.resync_s

    async def sync(
        self,
        *,
        max_retries: int = 0,
        base_delay_s: float = 1.0,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> int:
        """Measure the offset with one ``fetch_time()`` (retrying temporary errors as told) and
        return it. Errors propagate; the previous offset, if any, stays in use."""
        before = self._local_ms()
        server = int(
            await call_with_retries(
                self._exchange.fetch_time,
                max_retries=max_retries,
                base_delay_s=base_delay_s,
                max_wait_s=max_wait_s,
                retry_after=retry_after_from(self._exchange),
            )
        )
        after = self._local_ms()
        offset = server - after
        if abs(offset) > self.warn_offset_ms and (
            self.offset_ms is None or abs(offset - self.offset_ms) > self.warn_offset_ms
        ):
            log.warning(
                "the local clock is %.1f s %s the exchange's (round trip %d ms); "
                "candle closes follow the exchange's clock",
                abs(offset) / 1000,
                "behind" if offset > 0 else "ahead of",
                after - before,
            )
        self.offset_ms = offset
        self._synced_at = self._monotonic()
        return offset

    def now_ms(self) -> int | None:
        """A time the exchange's clock has certainly reached, or ``None`` before a sync."""
        if self.offset_ms is None:
            return None
        return self._local_ms() + self.offset_ms
