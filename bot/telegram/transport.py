"""The Bot API client: python-telegram-bot's ``telegram.Bot``, wrapped so the token stays secret.

Why PTB's ``Bot`` and not its ``Application``: the Bot class is a maintained client (encoding of
form, JSON and multipart bodies, the error classes ``RetryAfter``, ``NetworkError``/``TimedOut``,
``BadRequest``, ``Forbidden``, ``InvalidToken``); the Application would bring its own update
queue, job queue and shutdown logic, while the daemon wants to own the event loop and decide
itself what is retried, dropped or waited for. So we use the Bot alone, and:

* never call ``Bot.initialize()``: on a rejected token it raises ``InvalidToken`` whose message
  contains the token. The HTTP clients are created, initialised and shut down here instead;
* never log the ``Bot`` object (its ``repr`` is ``Bot[token=...]``);
* redact the token from the loggers that can see it: ``telegram.Bot`` logs the API URL (which
  holds the token) at DEBUG when constructed, and ``httpx`` logs every request URL at INFO.
  :class:`TokenRedactor` sits on those loggers, and ``httpx``/``httpcore`` are lowered to
  WARNING unless someone configured them already (a long poll would log a line every 25 s);
* lower PTB's "Can not load invalid JSON data" ERROR+traceback (a gateway's HTML 502 page) to
  DEBUG: the failure reaches the caller as ``NetworkError`` anyway, logged once per outage.
"""

from __future__ import annotations

import logging
import re
import warnings
from datetime import timedelta
from typing import Any

from pydantic import SecretStr
from telegram import Bot
from telegram.error import RetryAfter
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

_TOKEN_IN_URL = re.compile(r"/bot[0-9]+:[A-Za-z0-9_-]+")
_REDACTED_URL = "/bot<redacted>"
_REDACTED = "<redacted>"

# Loggers that may see the token: a logger's filters only apply to records it creates itself,
# so every one of them gets the filter (children do not inherit it).
_GUARDED_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "telegram",
    "telegram.Bot",
    "telegram.request.BaseRequest",
    "telegram.request.HTTPXRequest",
    "bot.telegram",
    "bot.telegram.alerts",
    "bot.telegram.chats",
    "bot.telegram.commands",
    "bot.telegram.transport",
)
_QUIETED_LOGGERS = ("httpx", "httpcore")

# PTB warns each time it builds a RetryAfter that ``retry_after`` will become a timedelta; we
# read both forms (retry_after_s), so the warning says nothing the operator can act on.
warnings.filterwarnings(
    "ignore",
    message=r".*attribute `retry_after` will be of type",
    category=PTBDeprecationWarning,
)


class TokenRedactor(logging.Filter):
    """Replaces bot tokens in log records (message, arguments, formatted traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        """Redact ``secret`` from now on."""
        if secret:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        """``text`` without any known token or ``/bot<token>`` URL part."""
        text = _TOKEN_IN_URL.sub(_REDACTED_URL, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's problem, not ours
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class GatewayPageDemoter(logging.Filter):
    """PTB logs an ERROR with a traceback ("Can not load invalid JSON data") for every non-JSON
    answer, which is what a gateway's 502/504 page is; during an outage that would be one
    traceback per retry. The error still reaches us as ``NetworkError`` (logged once per
    outage), so the record is lowered to DEBUG without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Can not load invalid JSON"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
        return True


REDACTOR = TokenRedactor()
_DEMOTER = GatewayPageDemoter()


def guard_loggers() -> None:
    """Install :data:`REDACTOR` on every logger that can see the token (idempotent)."""
    for name in _GUARDED_LOGGERS:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)
    base_request = logging.getLogger("telegram.request.BaseRequest")
    if _DEMOTER not in base_request.filters:
        base_request.addFilter(_DEMOTER)
    for name in _QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def reveal(token: SecretStr | str) -> str:
    """The token's text, registered with the redactor before anyone can log it."""
    text = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
    if not text:
        raise ValueError("the Telegram bot token is empty (set CRYPTORLPM_TELEGRAM_TOKEN)")
    guard_loggers()
    REDACTOR.add(text)
    return text


class BotClient:
    """A ``telegram.Bot`` pointed at ``api_url`` with HTTP clients this object owns.

    ``bot`` is the PTB client; :meth:`open` and :meth:`close` start and release its connection
    pools (two: one for long polling, one for everything else, so a waiting ``getUpdates`` never
    holds up a reply).
    """

    def __init__(
        self,
        api_url: str,
        token: SecretStr | str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        secret = reveal(token)
        base = api_url.rstrip("/")
        self._requests = (
            HTTPXRequest(
                connection_pool_size=2,
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,  # PTB adds the long-poll timeout to it
                write_timeout=read_timeout_s,
                pool_timeout=read_timeout_s,
            ),
            HTTPXRequest(
                connection_pool_size=8,
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                write_timeout=read_timeout_s,
                pool_timeout=read_timeout_s,
                media_write_timeout=2 * read_timeout_s,
            ),
        )
        self.bot = Bot(
            secret,
            base_url=f"{base}/bot",
            base_file_url=f"{base}/file/bot",
            get_updates_request=self._requests[0],
            request=self._requests[1],
        )
        self._open = False

    async def open(self) -> None:
        """Start the HTTP clients (no request is made)."""
        if not self._open:
            for request in self._requests:
                await request.initialize()
            self._open = True

    async def close(self) -> None:
        """Release the HTTP clients."""
        for request in self._requests:
            await request.shutdown()
        self._open = False

    def __repr__(self) -> str:
        return "BotClient(<redacted>)"


def brief(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line (PTB quotes whole HTML error pages in its messages)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    text = text.split(". Parsing the server response", 1)[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after_s(exc: RetryAfter) -> float:
    """Seconds a ``RetryAfter`` asks to wait (PTB answers int or timedelta depending on
    ``PTB_TIMEDELTA``; the int form warns, so the warning is silenced here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value: Any = exc.retry_after
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    return max(0.0, float(value))
