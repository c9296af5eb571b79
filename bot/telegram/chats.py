"""The chats alerts go to and commands come from, as Telegram says they change while running.

``[telegram].chat_ids`` names the chats once. Telegram may then answer a send with:

* **400 with** ``parameters.migrate_to_chat_id`` (python-telegram-bot raises ``ChatMigrated``):
  the group became a supergroup and has a new id. The message is sent again to the new id, every
  later one goes there, commands from the new id are obeyed, and ``on_migrated`` is told (the
  daemon keeps the mapping in ``state.db``, so a restart uses the new id before Telegram has to
  say it again). Logged once, with the line to put in the config.
* **403** ("bot was blocked by the user", "bot was kicked from the group chat", "user is
  deactivated") **or 400 "chat not found"** (and the other "this chat cannot be written to"
  answers): the chat is muted: no more sends to it until the daemon restarts, logged once. Its
  queued alerts are dropped, so a blocked bot costs one refused request, not one per alert.

:class:`TelegramChats` is shared by :class:`~bot.telegram.TelegramAlerts` and
:class:`~bot.telegram.TelegramCommands`, so both follow a migration at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from telegram.error import BadRequest, Forbidden, TelegramError

log = logging.getLogger(__name__)

MIGRATIONS_KEY = "telegram_chat_migrations"
"""The ``state.db`` key under which the daemon keeps ``{old chat id: new chat id}``."""

OnMigrated = Callable[[dict[int, int]], Awaitable[None]]
"""Told every migration so far (old id -> new id) after each new one; may persist them."""

# 400 answers that concern the chat, not the message (lower case, without "Bad Request: ").
_UNWRITABLE_CHAT = (
    "chat not found",
    "group chat was deactivated",
    "the group chat was deleted",
    "have no rights to send a message",
    "not enough rights to send text messages",
    "need administrator rights in the channel chat",
    "peer_id_invalid",
)


def chat_refusal(exc: TelegramError) -> str | None:
    """Why Telegram will take no message at all for this chat, or ``None`` when ``exc`` is about
    the message (or is no refusal): 403s and the chat-level 400s."""
    if isinstance(exc, Forbidden):
        return str(exc)
    if isinstance(exc, BadRequest):
        text = str(exc).lower()
        if any(marker in text for marker in _UNWRITABLE_CHAT):
            return str(exc)
    return None


class TelegramChats:
    """The configured chat ids with the migrations and mutes learnt since (see the module
    docstring). ``migrated``: migrations remembered from an earlier run."""

    def __init__(
        self,
        chat_ids: Iterable[int],
        *,
        migrated: Mapping[int, int] | None = None,
        on_migrated: OnMigrated | None = None,
    ) -> None:
        self._configured = tuple(dict.fromkeys(int(c) for c in chat_ids))
        self.migrations: dict[int, int] = {int(k): int(v) for k, v in (migrated or {}).items()}
        self._on_migrated = on_migrated
        self._muted: dict[int, str] = {}
        for old in self._configured:
            new = self.resolve(old)
            if new != old:
                log.warning(
                    "telegram: chat %s became supergroup %s (remembered from an earlier run); "
                    "sending there. Put %s in [telegram].chat_ids",
                    old,
                    new,
                    new,
                )

    def resolve(self, chat_id: int) -> int:
        """``chat_id`` after every known migration."""
        seen = {chat_id}
        while chat_id in self.migrations:
            chat_id = self.migrations[chat_id]
            if chat_id in seen:  # a cycle would be Telegram's bug; stop anywhere on it
                break
            seen.add(chat_id)
        return chat_id

    @property
    def recipients(self) -> tuple[int, ...]:
        """The chats alerts go to now: configured, migrated, not muted."""
        ids = dict.fromkeys(self.resolve(c) for c in self._configured)
        return tuple(c for c in ids if c not in self._muted)

    def allowed(self, chat_id: int) -> bool:
        """Whether commands from ``chat_id`` are obeyed (a configured chat or its successor)."""
        return any(chat_id in (c, self.resolve(c)) for c in self._configured)

    def muted(self, chat_id: int) -> bool:
        """Whether sends to ``chat_id`` stopped (blocked, kicked, not found)."""
        return chat_id in self._muted

    async def migrate(self, old: int, new: int) -> bool:
        """Record that ``old`` became ``new``; returns whether that was news (then logged and
        reported to ``on_migrated``)."""
        old, new = int(old), int(new)
        if old == new or self.migrations.get(old) == new:
            return False
        self.migrations[old] = new
        log.warning(
            "telegram: chat %s became supergroup %s; alerts go there from now on and its "
            "commands are obeyed. Put %s in [telegram].chat_ids",
            old,
            new,
            new,
        )
        if self._on_migrated is not None:
            try:
                await self._on_migrated(dict(self.migrations))
            except Exception:  # keeping it is a convenience; the log line says what to do
                log.exception("telegram: could not remember the migration of chat %s", old)
        return True

    def mute(self, chat_id: int, reason: str) -> bool:
        """Stop sending to ``chat_id``; returns whether it was news (then logged at ERROR)."""
        if chat_id in self._muted:
            return False
        self._muted[chat_id] = reason
        log.error(
            "telegram: chat %s refuses messages (%s); no more alerts to it until the daemon "
            "restarts (unblock the bot or add it back to the chat, or fix [telegram].chat_ids)",
            chat_id,
            reason,
        )
        return True
