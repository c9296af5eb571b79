"""Logging set-up: plain or JSON lines, and a filter that keeps secrets out of every record.

Secrets are never formatted into log messages on purpose; :class:`SecretRedactor` is the second
line of defence for what a library might log (a URL holding a bot token, an exception echoing a
request). It replaces every configured secret value in the final message, and in the exception
text, with ``***``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

NOISY = (
    "aiosqlite",
    "matplotlib",
    "urllib3",
    "asyncio",
    "httpx",
    "httpcore",
    "telegram",
    "uvicorn",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` (+ ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class SecretRedactor(logging.Filter):
    """Replaces secret values in a record's message and exception with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s and len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            clean = self._redact(text)
            if clean != text:
                record.exc_info = None
                record.exc_text = clean
        return True

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(verbose: bool = False, *, json_lines: bool = False) -> None:
    """Timestamped lines (or JSON) on stderr; quiet third-party loggers."""
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._cryptorlpm = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others (pytest's) stay
        if getattr(old, "_cryptorlpm", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def redact_secrets(secrets: Iterable[str]) -> SecretRedactor:
    """Install a :class:`SecretRedactor` on every root handler; returns it."""
    redactor = SecretRedactor(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    return redactor
