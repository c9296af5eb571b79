"""Retrying exchange calls: temporary errors only, exponential backoff with jitter.

A temporary error (see :func:`bot.feed.exchange.is_temporary`) is retried up to ``max_retries``
times, waiting ``base_delay_s * 2**(n-1)`` (capped) plus up to 25 % random jitter before retry
``n``; when the server said how long to wait (``Retry-After`` on a 429/418), the wait is at least
that long, but never longer than ``max_wait_s``: a 418 is an IP ban that can last hours, and a
call that would sleep through it raises :class:`RetryWaitTooLong` instead, so the caller decides
(a download stops and can be resumed; the live stream retries that symbol later). A permanent
error is raised at once, and so is the last temporary one when the retries are spent: the caller
sees ccxt's own exception and can describe it with :func:`bot.feed.exchange.describe_error`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import ccxt

from bot.feed.exchange import describe_error, is_temporary

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF_S = 60.0
"""Longest wait the exponential backoff alone will produce."""

DEFAULT_MAX_WAIT_S = 120.0
"""Longest single wait :func:`call_with_retries` accepts by default (server-requested or not)."""


class RetryWaitTooLong(RuntimeError):
    """The server asked for a longer wait before the next try than the caller accepts.

    Attributes: ``call`` (the function's name), ``wait_s`` (the wait asked for), ``max_wait_s``
    and ``error`` (the exchange's error, also the ``__cause__``).
    """

    def __init__(self, call: str, wait_s: float, max_wait_s: float, error: BaseException) -> None:
        super().__init__(
            f"{call}: the exchange asked to wait {wait_s:.0f} s before trying again "
            f"({describe_error(error)}), more than the {max_wait_s:.0f} s allowed; "
            "try again later"
        )
        self.call = call
        self.wait_s = wait_s
        self.max_wait_s = max_wait_s
        self.error = error


RetryAfter = Callable[[BaseException], float | None]
"""Reads the server-requested wait (seconds) for an error, or ``None`` when there is none."""

OnRetry = Callable[[int, BaseException, float], None]
"""Called before each retry with the retry number (1-based), the error and the wait in seconds."""


async def call_with_retries(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    max_retries: int,
    base_delay_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    retry_after: RetryAfter | None = None,
    on_retry: OnRetry | None = None,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    **kw: Any,
) -> T:
    """Await ``fn(*args, **kw)``, retrying temporary errors up to ``max_retries`` times.

    ``retry_after`` reads the server-requested wait from an error; by default it comes from the
    ``last_response_headers`` of the exchange ``fn`` is bound to (ccxt fills them before it
    raises). A wait longer than ``max_wait_s`` is not slept through: :class:`RetryWaitTooLong`
    is raised (from the exchange's error). ``sleep`` is injectable so tests need not wait. Each
    retry logs one line on this module's logger and calls ``on_retry``.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if max_wait_s < 0:
        raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
    if retry_after is None:
        retry_after = retry_after_from(getattr(fn, "__self__", None))
    name = getattr(fn, "__name__", repr(fn))
    attempt = 0
    while True:
        try:
            return await fn(*args, **kw)
        except Exception as exc:
            if not is_temporary(exc) or attempt >= max_retries:
                raise
            attempt += 1
            delay = backoff_delay(attempt, base_delay_s)
            server_wait = retry_after(exc)
            if server_wait is not None and server_wait > delay:
                delay = server_wait
            if delay > max_wait_s:
                raise RetryWaitTooLong(name, delay, max_wait_s, exc) from exc
            log.warning(
                "%s failed, retry %d/%d in %.2f s%s: %s",
                name,
                attempt,
                max_retries,
                delay,
                " (server asked to wait)" if delay == server_wait else "",
                describe_error(exc),
            )
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)


def backoff_delay(
    attempt: int, base_delay_s: float, *, max_delay_s: float = MAX_BACKOFF_S, jitter: float = 0.25
) -> float:
    """Wait before retry ``attempt`` (1-based): ``base * 2**(attempt-1)``, capped, plus jitter.

    The jitter is uniform in ``[0, jitter * delay]``, so callers that fail together do not retry
    in lockstep.
    """
    delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1))
    return delay + random.uniform(0.0, jitter * delay)


def retry_after_from(exchange: Any) -> RetryAfter:
    """A :data:`RetryAfter` that reads ``Retry-After`` of ``exchange``'s last HTTP answer.

    Only rate-limit errors (ccxt's ``DDoSProtection``/``RateLimitExceeded``, which Binance's 429
    and 418 become) consult the headers: for any other error they may belong to an older answer.
    An error object carrying its own ``headers`` mapping (or a ``retry_after`` attribute) wins.
    """

    def read(exc: BaseException) -> float | None:
        own = getattr(exc, "retry_after", None)
        if isinstance(own, int | float):
            return float(own)
        headers = getattr(exc, "headers", None)
        if not isinstance(headers, Mapping):
            if not isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
                return None
            headers = getattr(exchange, "last_response_headers", None)
        if not isinstance(headers, Mapping):
            return None
        return parse_retry_after(headers)

    return read


def parse_retry_after(headers: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds named by a ``Retry-After`` header (delta-seconds or HTTP date), else ``None``."""
    value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
