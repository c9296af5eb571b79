"""Telegram alerts: fills, rejections, guardrail refusals, errors, start/stop, a daily summary.

Guardrails that work as configured (``max_weight_per_coin`` capping, ``min_cash`` keeping cash:
:data:`bot.engine.risk.ROUTINE_RULES`) are not alerted: they act at every decision. Refusals
that stop or cut trading (stale data, order notional, turnover, kill switch) are.

Trading never waits on Telegram. Every entry point (the bus handlers, :meth:`notify`,
:meth:`error`, ...) formats a line, appends it to a bounded :class:`~bot.telegram.outbox.Outbox`
and returns; it never blocks and never raises into the caller. One sender task drains the queue
in order:

* spacing sends per chat and overall (:class:`~bot.telegram.outbox.RateLimiter`);
* on 429 it waits ``retry_after`` and sends the same message again;
* while Telegram is unreachable (connection refused, 5xx, timeouts) it keeps the message at the
  front and retries with exponential backoff capped at ``backoff_max_s``, so everything queued
  during an outage arrives in order afterwards (a timed-out send may arrive twice: delivery is
  at least once);
* a group that became a supergroup (400 with ``migrate_to_chat_id``) gets the message again at
  its new id, and every later one (:mod:`bot.telegram.chats`);
* a chat that takes no message at all (403 blocked or kicked, 400 "chat not found") is muted
  until restart with one ERROR line; its queued alerts are dropped and counted as failed, so
  nothing is retried;
* a rejected token (401/404) stops the alerts with one ERROR line: nothing could ever arrive;
* any other message Telegram refuses for good (another 400 or 403) is logged, counted as failed
  and skipped.

When the queue is full the oldest message is dropped and counted. Each alert is one message per
chat in ``chat_ids``, so with two chats a ``queue_size`` of 200 holds 100 alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import SecretStr
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bot.bus import EventBus
from bot.engine.risk import is_routine
from bot.events import OrderFilled, OrderRejected, PortfolioValued, RiskRefusal
from bot.tasks import stop_task
from bot.telegram import format as fmt
from bot.telegram.chart import equity_png
from bot.telegram.chats import TelegramChats, chat_refusal
from bot.telegram.outbox import Clock, Outbox, Outgoing, RateLimiter
from bot.telegram.summary import DailyLedger, DaySummary
from bot.telegram.transport import BotClient, brief, retry_after_s
from config.schema import TelegramConfig

log = logging.getLogger(__name__)

_PERMANENT = (BadRequest, Forbidden, Conflict)
_LOUD_DROP_COUNTS = frozenset(10**k for k in range(12))  # warn at 1, 10, 100, ... drops


@dataclass(frozen=True, slots=True)
class AlertStats:
    """Counts since construction. ``queued`` includes a message being sent right now."""

    sent: int
    dropped: int
    queued: int
    failed: int
    retries: int


class TelegramAlerts:
    """Sends alerts to every chat in ``config.chat_ids``; see the module docstring.

    ``quote``: the quote currency, for the daily summary. ``clock``: monotonic seconds for the
    rate limiter (tests inject one). ``client``: a ready :class:`BotClient` (default: one built
    from ``config.api_url`` and ``token``). ``chats``: the chat registry shared with the
    commands (default: one over ``config.chat_ids``).
    """

    def __init__(
        self,
        config: TelegramConfig,
        token: SecretStr | str,
        *,
        quote: str = "USDT",
        clock: Clock = time.monotonic,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        client: BotClient | None = None,
        chats: TelegramChats | None = None,
        inputs: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.inputs = inputs
        """Every coin's inputs as lines, appended to the daily summary (the daemon's)."""
        self.quote = quote
        self.chats = chats or TelegramChats(config.chat_ids)
        self._client = client or BotClient(config.api_url, token)
        self._outbox = Outbox(config.queue_size)
        self._limiter = RateLimiter(config.per_chat_per_s, config.global_per_s, clock)
        self._ledger = (
            DailyLedger(config.daily_summary_hour)
            if config.daily_summary_hour is not None
            else None
        )
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._sent = self._failed = self._retries = 0
        self._token_rejected = False
        self._inflight: Outgoing | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._unsubscribe: list[Callable[[], None]] = []

    # -- what the daemon calls ----------------------------------------------------------------

    def attach(self, bus: EventBus) -> None:
        """Subscribe to fills, rejections, refusals and valuations (all handlers synchronous)."""
        self._unsubscribe += [
            bus.subscribe(OrderFilled, self.on_fill),
            bus.subscribe(OrderRejected, self.on_rejection),
            bus.subscribe(RiskRefusal, self.on_refusal),
            bus.subscribe(PortfolioValued, self.on_valuation),
        ]

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def notify(self, text: str) -> None:
        """Queue a plain message."""
        self._enqueue(lambda: fmt.format_notice(text), "notice")

    def error(self, text: str) -> None:
        """Queue an error message."""
        self._enqueue(lambda: fmt.format_error(text), "error")

    def started(self, summary: str) -> None:
        """Queue the daemon's start message."""
        self._enqueue(lambda: fmt.format_started(summary), "started")

    def stopped(self, summary: str) -> None:
        """Queue the daemon's stop message (call before :meth:`close`, which flushes it)."""
        self._enqueue(lambda: fmt.format_stopped(summary), "stopped")

    async def start(self) -> None:
        """Open the HTTP client and launch the sender task (makes no request itself)."""
        if self._task is not None:
            return
        if not self.config.chat_ids:
            log.warning("telegram: no chat_ids configured, alerts go nowhere")
        await self._client.open()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._run(), name="telegram-alerts")

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Try to deliver what is queued within ``flush_timeout_s``, then stop the sender."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=flush_timeout_s)
            await stop_task(self._task)
            self._task = None
            left = len(self._outbox) + (self._inflight is not None)
            if left:
                log.warning("telegram: %d alert(s) not delivered at shutdown", left)
        await self._client.close()

    @property
    def stats(self) -> AlertStats:
        """Sent, dropped, queued, failed and retried counts."""
        return AlertStats(
            sent=self._sent,
            dropped=self._outbox.dropped,
            queued=len(self._outbox) + (self._inflight is not None),
            failed=self._failed,
            retries=self._retries,
        )

    # -- bus handlers (synchronous, never raise) ------------------------------------------------

    def on_fill(self, event: OrderFilled) -> None:
        """Count the fill for the summary; alert it when ``alert_fills``."""
        if self._ledger is not None:
            self._ledger.count_fill()
        if self.config.alert_fills:
            self._enqueue(lambda: fmt.format_fill(event), "fill")

    def on_rejection(self, event: OrderRejected) -> None:
        """Alert a rejected order (always: a rejection needs a look whatever the settings)."""
        self._enqueue(lambda: fmt.format_rejection(event), "rejection")

    def on_refusal(self, event: RiskRefusal) -> None:
        """Count the refusal for the summary and alert it when ``alert_refusals``; a configured
        cap at work (``max_weight_per_coin``, ``min_cash``: every decision) is neither."""
        if is_routine(event):
            return
        if self._ledger is not None:
            self._ledger.count_refusal()
        if self.config.alert_refusals:
            self._enqueue(lambda: fmt.format_refusal(event), "refusal")

    def on_valuation(self, event: PortfolioValued) -> None:
        """Feed the daily summary; queue it (with its chart) when the day boundary is crossed."""
        if self._ledger is None:
            return
        try:
            summary = self._ledger.on_valuation(event)
        except Exception:
            log.exception("telegram: daily summary bookkeeping failed")
            return
        if summary is not None:
            inputs = self._input_lines()
            self._enqueue(
                lambda: fmt.format_summary(summary, self.quote, inputs),
                "summary",
                self._chart(summary),
            )

    def _input_lines(self) -> list[str]:
        if self.inputs is None:
            return []
        try:
            return list(self.inputs())
        except Exception:
            log.exception("telegram: the inputs' freshness could not be read")
            return []

    # -- queueing -------------------------------------------------------------------------------

    def _chart(self, summary: DaySummary) -> Callable[[], bytes]:
        title = f"Equity to {fmt.fmt_ts(summary.end_ts)}"
        return functools.partial(equity_png, summary.points, quote=self.quote, title=title)

    def _enqueue(
        self, render: Callable[[], str], kind: str, photo: Callable[[], bytes] | None = None
    ) -> None:
        try:
            if self._token_rejected or not self.chats.recipients:
                return
            text = render()
            loop = self._loop
            if loop is not None and threading.get_ident() != self._loop_thread:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(self._put, text, kind, photo)
                return
            self._put(text, kind, photo)
        except Exception:  # an alert must never break the caller
            log.exception("telegram: could not queue a %s alert", kind)

    def _put(self, text: str, kind: str, photo: Callable[[], bytes] | None) -> None:
        for chat_id in self.chats.recipients:
            if self._outbox.put(Outgoing(chat_id, text, photo, kind)) is not None:
                dropped = self._outbox.dropped
                loud = dropped in _LOUD_DROP_COUNTS
                log.log(
                    logging.WARNING if loud else logging.DEBUG,
                    "telegram: alert queue full, oldest dropped (%d so far)",
                    dropped,
                )
        self._idle.clear()
        self._wake.set()

    # -- the sender -----------------------------------------------------------------------------

    async def _run(self) -> None:
        initial_s, max_s = self._backoff
        failures = 0
        down_since: float | None = None
        while True:
            item = self._outbox.peek()
            if item is None:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait_s = self._limiter.wait_s(item.chat_id)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            self._inflight = item = self._outbox.pop()
            try:
                await self._deliver(item)
            except asyncio.CancelledError:  # closing mid-send: count it as not delivered
                self._outbox.put_back(item)
                raise
            except RetryAfter as exc:
                seconds = retry_after_s(exc)
                self._retries += 1
                self._limiter.block(seconds)
                log.warning("telegram: flood control, next send in %.0f s", seconds)
                self._outbox.put_back(item)
            except ChatMigrated as exc:  # the group is a supergroup now: same message, new id
                new_id = int(exc.new_chat_id)
                if new_id == item.chat_id:  # Telegram contradicting itself: do not loop
                    self._failed += 1
                    log.error("telegram: chat %s 'migrated' to itself; alert dropped", new_id)
                    continue
                await self.chats.migrate(item.chat_id, new_id)
                self._outbox.readdress(item.chat_id, new_id)
                item.chat_id = new_id
                self._outbox.put_back(item)
            except InvalidToken:  # nothing will ever be delivered: say so once, send no more
                self._failed += 1 + len(self._outbox)
                self._outbox.discard_all()
                self._token_rejected = True
                log.error(
                    "telegram: the bot token was rejected (401/404); no alerts will be sent "
                    "(check CRYPTORLPM_TELEGRAM_TOKEN)"
                )
            except _PERMANENT as exc:
                self._failed += 1
                reason = chat_refusal(exc)
                if reason is not None:  # the chat, not this message: stop writing to it
                    self.chats.mute(item.chat_id, brief(exc))
                    self._failed += self._outbox.discard(item.chat_id)
                    continue
                log.error(
                    "telegram: %s alert to chat %s refused (%s)",
                    item.kind,
                    item.chat_id,
                    brief(exc),
                )
            except NetworkError as exc:  # connection refused, 5xx, timeouts: keep and retry
                self._retries += 1
                failures += 1
                delay_s = min(max_s, initial_s * 2 ** (failures - 1))
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "telegram: unreachable (%s), %d alert(s) kept, retrying",
                        brief(exc),
                        len(self._outbox) + 1,
                    )
                else:
                    log.debug(
                        "telegram: still unreachable (%s), retry in %.1f s", brief(exc), delay_s
                    )
                self._outbox.put_back(item)
                self._inflight = None
                await asyncio.sleep(delay_s)
            except TelegramError as exc:
                self._failed += 1
                log.error(
                    "telegram: %s alert to chat %s failed (%s)", item.kind, item.chat_id, brief(exc)
                )
            except Exception:
                self._failed += 1
                log.exception("telegram: %s alert to chat %s failed", item.kind, item.chat_id)
            else:
                self._sent += 1
                self._limiter.record(item.chat_id)
                if down_since is not None:
                    log.info(
                        "telegram: reachable again after %.1f s, %d alert(s) queued",
                        time.monotonic() - down_since,
                        len(self._outbox),
                    )
                down_since, failures = None, 0
            finally:
                self._inflight = None

    async def _deliver(self, item: Outgoing) -> None:
        bot = self._client.bot
        if callable(item.photo):
            try:
                item.photo = await asyncio.to_thread(item.photo)
            except Exception:
                log.exception("telegram: chart rendering failed, sending the text alone")
                item.photo = None
        if item.photo is not None:
            await bot.send_photo(
                chat_id=item.chat_id,
                photo=item.photo,
                caption=fmt.truncate(item.text, fmt.MAX_CAPTION),
                filename="equity.png",
            )
        else:
            await bot.send_message(chat_id=item.chat_id, text=fmt.truncate(item.text))
