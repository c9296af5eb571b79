"""Telegram commands: a long-polling client of the control service (:class:`bot.control.Controls`).

The poller calls ``getUpdates`` with ``offset`` = last handled ``update_id`` + 1, so each update is
handled once; on start it calls ``deleteWebhook(drop_pending_updates=True)``: commands sent while
the daemon was not running are dropped rather than obeyed late (a ``/resume`` from yesterday must
not restart trading after a kill switch tripped today). On close it confirms the last handled
update with a short ``getUpdates``, so a restart does not see it again either.

Only chats in ``chat_ids`` (or the supergroups they became, :mod:`bot.telegram.chats`) are
obeyed; any other chat is answered "Not authorised." and logged at WARNING with its id.

``getUpdates`` answers 409 in two cases. "terminated by other getUpdates request": another
process polls with this token; logged as such and retried with backoff (the other one keeps
getting the commands meanwhile). "can't use getUpdates method while webhook is active": a webhook
was set after start (the start deletes any); it is deleted again, without dropping the pending
commands, and polling goes on, with the backoff growing while the conflict repeats.

A :class:`~bot.control.ControlError` is replied as is; any other exception gets a short reply
and a traceback in the log. ``/stop`` only arms a confirmation: ``/stop confirm`` within
``stop_confirm_s`` (60 s) calls ``controls.stop()``.

``/plug`` and ``/unplug`` change what trades: the first message only answers what would change
(``controls.preview_plug`` / ``preview_unplug``, which refuse an unknown coin or model at once)
and a one-time code; ``/confirm CODE`` from the same chat within ``confirm_s`` (2 minutes)
does it. A confirmation from another chat, after the window or with a wrong code is refused and
changes nothing (a wrong code also drops the pending request). The windows are measured on
``clock``: the daemon passes its own (the exchange's) clock, tests a stepped one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from telegram import BotCommand, Update
from telegram.error import (
    ChatMigrated,
    Conflict,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bot.control import ControlError, Controls
from bot.tasks import stop_task
from bot.telegram import format as fmt
from bot.telegram.chats import TelegramChats, chat_refusal
from bot.telegram.outbox import Clock
from bot.telegram.transport import BotClient, brief, retry_after_s
from config.schema import TelegramConfig

log = logging.getLogger(__name__)

NOT_AUTHORISED = "Not authorised."
STOP_CONFIRM_S = 60.0
CONFIRM_S = 120.0
"""How long a /plug or /unplug waits for its /confirm."""
AUDIT_DEFAULT, AUDIT_MAX = 5, 20

Handler = Callable[[int, list[str]], Awaitable[str]]


@dataclass(frozen=True)
class PendingChange:
    """A /plug or /unplug waiting for its ``/confirm CODE`` (``deadline`` on the clock)."""

    command: str  # what was asked, for the replies: "/plug BTC btc-7"
    code: str
    deadline: float
    run: Callable[[], Awaitable[str]]


def _window(seconds: float) -> str:
    """``120`` -> ``2 minutes``, ``90`` -> ``90 s``."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} s"


class TelegramCommands:
    """Polls for commands and answers them through ``controls``; see the module docstring.

    ``clock``: seconds that only go forward (for the confirmation windows; the daemon passes its
    exchange clock); ``confirm_s``: how long a /plug or /unplug waits for /confirm; ``client``:
    a ready :class:`BotClient` (default: one built from ``config.api_url`` and ``token``);
    ``chats``: the chat registry shared with the alerts (default: one over ``config.chat_ids``).
    """

    def __init__(
        self,
        config: TelegramConfig,
        token: SecretStr | str,
        controls: Controls,
        *,
        clock: Clock = time.monotonic,
        stop_confirm_s: float = STOP_CONFIRM_S,
        confirm_s: float = CONFIRM_S,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        drop_pending: bool = True,
        client: BotClient | None = None,
        chats: TelegramChats | None = None,
    ) -> None:
        self.config = config
        self.controls = controls
        self.chats = chats or TelegramChats(config.chat_ids)
        self._client = client or BotClient(config.api_url, token)
        self._clock = clock
        self._stop_confirm_s = stop_confirm_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._drop_pending = drop_pending
        self._offset: int | None = None
        self._stop_armed: dict[int, float] = {}
        self._confirm_s = confirm_s
        self._pending: dict[int, PendingChange] = {}
        self._task: asyncio.Task[None] | None = None
        self._handling: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        """Set once the webhook is deleted and polling has begun."""
        self.handled = 0
        """Updates handled so far (authorised or not)."""
        self._commands: dict[str, Handler] = {
            "status": self._status,
            "balance": self._balance,
            "weights": self._weights,
            "modules": self._modules,
            "audit": self._audit,
            "regime": self._regime,
            "pause": self._pause,
            "resume": self._resume,
            "stop": self._stop,
            "retrain": self._retrain,
            "plug": self._plug,
            "unplug": self._unplug,
            "confirm": self._confirm,
            "rollback": self._rollback,
            "why": self._why,
            "help": self._help,
            "start": self._help,  # what Telegram clients send when a chat with the bot opens
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and launch the polling task (returns at once)."""
        if self._task is None:
            await self._client.open()
            self._task = asyncio.create_task(self._run(), name="telegram-commands")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop polling; a command being handled gets ``timeout_s`` to finish and reply."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        handling = self._handling
        if handling is not None and handling is not asyncio.current_task():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(handling), timeout=timeout_s)
        if self._offset is not None:
            with contextlib.suppress(Exception):  # confirm handled updates; best effort
                await asyncio.wait_for(
                    self._client.bot.get_updates(offset=self._offset, timeout=0, limit=1),
                    timeout=min(2.0, timeout_s),
                )
        await self._client.close()

    # -- polling --------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._retrying("deleteWebhook", self._prepare)
        self.ready.set()
        bot, timeout = self._client.bot, self.config.poll_timeout_s
        while True:
            updates = await self._retrying(
                "getUpdates",
                lambda: bot.get_updates(
                    offset=self._offset, timeout=timeout, limit=100, allowed_updates=["message"]
                ),
            )
            for update in updates:
                self._offset = update.update_id + 1  # at most once, even if handling fails
                # shielded: cancelling the poller (close) lets the command finish its reply
                self._handling = asyncio.create_task(self.handle(update))
                try:
                    await asyncio.shield(self._handling)
                except Exception:  # handle() catches everything; this keeps the poller alive
                    log.exception("telegram: update %s could not be handled", update.update_id)
                self._handling = None

    async def _prepare(self) -> None:
        bot = self._client.bot
        await bot.delete_webhook(drop_pending_updates=self._drop_pending)
        commands = [BotCommand(name, f"{args} {text}".strip()) for name, args, text in fmt.COMMANDS]
        try:
            await bot.set_my_commands(commands)
        except TelegramError as exc:  # only the clients' command menu depends on it
            log.warning("telegram: setMyCommands failed: %s", exc)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` until it succeeds, with capped backoff on any Telegram error."""
        initial_s, max_s = self._backoff
        failures = 0
        while True:
            try:
                return await call()
            except RetryAfter as exc:
                delay_s = retry_after_s(exc)
                log.warning("telegram: %s flood control, retry in %.0f s", what, delay_s)
            except (TelegramError, OSError) as exc:
                failures += 1
                delay_s = min(max_s, initial_s * 2 ** (failures - 1))
                if isinstance(exc, InvalidToken):
                    log.error("telegram: %s: the bot token was rejected", what)
                elif isinstance(exc, Conflict) and "webhook" in str(exc).lower():
                    log.warning(
                        "telegram: %s: a webhook is set for this bot; deleting it to keep "
                        "polling (does another deployment use this token with a webhook?)",
                        what,
                    )
                    try:  # pending commands are kept: they were sent while we were running
                        await self._client.bot.delete_webhook(drop_pending_updates=False)
                    except TelegramError as again:
                        log.warning("telegram: deleteWebhook failed: %s", brief(again))
                elif isinstance(exc, Conflict):
                    log.error("telegram: %s: another client polls with this token", what)
                elif failures == 1 or not isinstance(exc, NetworkError):
                    log.warning(
                        "telegram: %s failed (%s: %s), retrying", what, type(exc).__name__, exc
                    )
                else:
                    log.debug("telegram: %s still failing (%s)", what, exc)
            await asyncio.sleep(delay_s)

    # -- one update -----------------------------------------------------------------------------

    async def handle(self, update: Update) -> None:
        """Answer one update (never raises)."""
        self.handled += 1
        message = update.message
        if message is None:
            return
        if message.migrate_to_chat_id and self.chats.allowed(message.chat.id):
            # The service message a group sends when it becomes a supergroup.
            await self.chats.migrate(message.chat.id, message.migrate_to_chat_id)
            return
        if not message.text or not message.text.startswith("/"):
            return
        chat_id = message.chat.id
        words = message.text.split()
        name = words[0][1:].split("@", 1)[0].lower()
        args = words[1:]
        if not self.chats.allowed(chat_id):
            log.warning("telegram: refused /%s from unauthorised chat %s", name[:32], chat_id)
            await self._reply(chat_id, NOT_AUTHORISED)
            return
        handler = self._commands.get(name)
        if handler is None:
            await self._reply(chat_id, f"Unknown command /{name}; send /help for the list.")
            return
        try:
            text = await handler(chat_id, args)
        except ControlError as exc:
            text = str(exc) or "Refused."
        except Exception:
            log.exception("telegram: /%s failed", name)
            text = f"/{name} failed with an internal error; see the daemon's log."
        await self._reply(chat_id, text)

    async def _reply(self, chat_id: int, text: str) -> None:
        chat_id = self.chats.resolve(chat_id)
        for attempt in range(2):
            if self.chats.muted(chat_id):
                return
            try:
                await self._client.bot.send_message(chat_id=chat_id, text=fmt.truncate(text))
                return
            except RetryAfter as exc:
                delay_s = retry_after_s(exc)
                if attempt or delay_s > 30:
                    log.warning("telegram: reply to chat %s dropped (flood control)", chat_id)
                    return
                await asyncio.sleep(delay_s)
            except ChatMigrated as exc:  # answer in the supergroup the chat became
                new_id = int(exc.new_chat_id)
                if attempt or new_id == chat_id:
                    log.warning("telegram: reply to chat %s dropped (migrated again)", chat_id)
                    return
                await self.chats.migrate(chat_id, new_id)
                chat_id = new_id
            except TelegramError as exc:
                if (reason := chat_refusal(exc)) is not None:
                    self.chats.mute(chat_id, reason)
                else:
                    log.warning("telegram: reply to chat %s failed (%s)", chat_id, brief(exc))
                return
            except Exception as exc:  # a client closed under us at shutdown
                log.warning("telegram: reply to chat %s failed (%s)", chat_id, brief(exc))
                return

    # -- commands -------------------------------------------------------------------------------

    async def _status(self, chat_id: int, args: list[str]) -> str:
        return fmt.format_status(await self.controls.status())

    async def _balance(self, chat_id: int, args: list[str]) -> str:
        return fmt.format_balance(await self.controls.balance())

    async def _weights(self, chat_id: int, args: list[str]) -> str:
        return fmt.format_weights(await self.controls.weights())

    async def _modules(self, chat_id: int, args: list[str]) -> str:
        return fmt.format_modules(await self.controls.modules())

    async def _pause(self, chat_id: int, args: list[str]) -> str:
        return await self.controls.pause()

    async def _resume(self, chat_id: int, args: list[str]) -> str:
        return await self.controls.resume()

    async def _stop(self, chat_id: int, args: list[str]) -> str:
        if not args:
            self._stop_armed[chat_id] = self._clock() + self._stop_confirm_s
            return f"Send /stop confirm within {self._stop_confirm_s:.0f} s to stop the daemon."
        if [arg.lower() for arg in args] != ["confirm"]:
            return "Usage: /stop, then /stop confirm"
        deadline = self._stop_armed.pop(chat_id, None)
        if deadline is None or self._clock() > deadline:
            return "No stop pending (or it expired): send /stop first."
        return await self.controls.stop()

    async def _retrain(self, chat_id: int, args: list[str]) -> str:
        if len(args) != 1:
            return "Usage: /retrain COIN"
        return await self.controls.retrain(args[0].upper())

    async def _audit(self, chat_id: int, args: list[str]) -> str:
        usage = f"Usage: /audit [N] (N closes, 1..{AUDIT_MAX}; default {AUDIT_DEFAULT})"
        if len(args) > 1:
            return usage
        try:
            closes = int(args[0]) if args else AUDIT_DEFAULT
        except ValueError:
            return usage
        if not 1 <= closes <= AUDIT_MAX:
            return usage
        return fmt.format_audit(await self.controls.audit(closes))

    async def _regime(self, chat_id: int, args: list[str]) -> str:
        regime = getattr(self.controls, "regime", None)
        if regime is None:
            return "This daemon does not report a regime."
        return fmt.format_regime(await regime())

    async def _plug(self, chat_id: int, args: list[str]) -> str:
        if len(args) not in (1, 2):
            return "Usage: /plug COIN [MODEL_ID]"
        coin, model_id = args[0].upper(), (args[1] if len(args) == 2 else None)
        preview = await self.controls.preview_plug(coin, model_id)
        command = f"/plug {coin}" + (f" {model_id}" if model_id else "")
        return self._ask_confirmation(
            chat_id, command, preview, lambda: self.controls.plug(coin, model_id)
        )

    async def _unplug(self, chat_id: int, args: list[str]) -> str:
        if len(args) != 1:
            return "Usage: /unplug COIN"
        coin = args[0].upper()
        preview = await self.controls.preview_unplug(coin)
        return self._ask_confirmation(
            chat_id, f"/unplug {coin}", preview, lambda: self.controls.unplug(coin)
        )

    def _ask_confirmation(
        self, chat_id: int, command: str, preview: str, run: Callable[[], Awaitable[str]]
    ) -> str:
        """Keep ``run`` for this chat behind a fresh one-time code (replacing what it asked
        before) and answer the preview with the code."""
        code = f"{secrets.randbelow(1_000_000):06d}"
        self._pending[chat_id] = PendingChange(command, code, self._clock() + self._confirm_s, run)
        return (
            f"{preview}\nNothing changes until this chat replies /confirm {code} within "
            f"{_window(self._confirm_s)}."
        )

    async def _confirm(self, chat_id: int, args: list[str]) -> str:
        if len(args) != 1:
            return "Usage: /confirm CODE (the code /plug or /unplug answered)"
        code = args[0]
        pending = self._pending.pop(chat_id, None)
        if pending is None:
            elsewhere = [c for c, p in self._pending.items() if hmac.compare_digest(p.code, code)]
            if elsewhere:
                log.warning(
                    "telegram: chat %s sent the confirmation code of chat %s; refused",
                    chat_id,
                    elsewhere[0],
                )
                return (
                    "Refused: that code was sent to another chat; only the chat that asked "
                    "can confirm. Nothing changed."
                )
            return "Nothing waits for a confirmation in this chat: send /plug or /unplug first."
        if self._clock() > pending.deadline:
            return (
                f"The confirmation of {pending.command} expired ({_window(self._confirm_s)}); "
                "nothing changed. Send it again."
            )
        if not hmac.compare_digest(pending.code, code):
            return f"Wrong code: {pending.command} is cancelled, nothing changed. Send it again."
        return await pending.run()

    async def _rollback(self, chat_id: int, args: list[str]) -> str:
        if len(args) != 1:
            return "Usage: /rollback COIN"
        return await self.controls.rollback(args[0].upper())

    async def _why(self, chat_id: int, args: list[str]) -> str:
        if len(args) != 1:
            return "Usage: /why COIN"
        return fmt.format_why(await self.controls.why(args[0].upper()))

    async def _help(self, chat_id: int, args: list[str]) -> str:
        return fmt.format_help()
