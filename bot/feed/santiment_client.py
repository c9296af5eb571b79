"""sanpy plumbing for :mod:`bot.feed.santiment`: settings, threads, and error translation.

sanpy is synchronous (``requests``) and keeps its settings in module globals (the API key on
``san.ApiConfig``, the endpoint on ``san.graphql.DEFAULT_TRANSPORT``). So every sanpy call runs in
a worker thread (``asyncio.to_thread``) while holding one process-wide lock; inside the lock the
calling :class:`SanpyClient` applies its own endpoint, key and retry count and restores the
previous values afterwards. Several clients (or tests with several fake servers) can therefore
share the process, and the event loop never waits on the network.

sanpy's errors are translated here, at the boundary, into the exceptions below with one-line
messages. The API key never appears in a log line or an exception message: older servers echoed
it in their "not valid" answer, so every server text is redacted and translated errors do not
chain sanpy's original exception.

Without an API key, Santiment serves requests as its anonymous free plan (limited history, the
newest days held back, fewer metrics); nothing is refused for the missing key itself. A metric
the free plan lacks is reported with the hint to set the key. A key the server does not know is
answered 400 "Apikey not valid or malformed", which sanpy does not class as an authentication
error: it becomes :class:`SantimentAuthError` here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

import san
import san.env_vars
import san.graphql
from pydantic import SecretStr
from san.error import (
    SanAuthError,
    SanEmptyResultError,
    SanError,
    SanRateLimitError,
    SanResponseSizeLimitError,
    SanServerError,
    SanTransportError,
)

from config.schema import SantimentConfig

log = logging.getLogger(__name__)

API_KEY_ENV = "CRYPTORLPM_SANTIMENT_API_KEY"
"""Environment variable that carries the Santiment API key (see ``config.schema.Secrets``)."""

SANPY_DEFAULT_ENDPOINT: str = san.env_vars.SANBASE_GQL_HOST
"""The endpoint sanpy read from ``SANBASE_GQL_HOST`` at import (the public API by default)."""

RestrictionKind = Literal["plan", "history", "unknown"]

_T = TypeVar("_T")

# sanpy's settings are process globals: one lock serialises "apply settings, call, restore".
# A threading lock (taken inside the worker thread) rather than an asyncio one, so it also holds
# across event loops and never blocks a loop while waiting.
_SANPY_LOCK = threading.Lock()

# Server texts that mean "this metric is not available to you", by kind. Lower-case.
_RESTRICTION_MARKERS: tuple[tuple[str, RestrictionKind], ...] = (
    ("outside the allowed interval", "history"),
    ("upgrade to a higher tier in order to access more data", "history"),
    ("is not accessible with the currently used", "plan"),
    ("is not included in", "plan"),
    ("is not supported, is deprecated or is mistyped", "unknown"),
    ("is not available for", "unknown"),
)
_TRY_AGAIN = re.compile(r"try again in (\d+) seconds?", re.IGNORECASE)
_LIMIT_HEADLINE = re.compile(r"^(?:HTTP \d+: )?[^.]*limit[^.]*\.(?: Try again in [^.]*\.)?", re.I)
_APIKEY_ECHO = re.compile(r"apikey\s*'[^']*'", re.IGNORECASE)
_BAD_KEY = re.compile(
    r"apikey\b.*\b(?:not valid|malformed)|unsupported authorization header|^HTTP 40[13]\b",
    re.IGNORECASE,
)
_PATH_SUFFIX = re.compile(r"\s*\|\s*path=\[[^\]]*\]")
_STATUS_ERROR = re.compile(r"Status code: (\d+)\.\n (.*?)\n \{", re.DOTALL)
_MAX_REASON = 400


class SantimentError(Exception):
    """A Santiment request failed; the message says what and why in one line."""


class SantimentAuthError(SantimentError):
    """Santiment refused the credentials (missing, wrong or expired API key)."""


class SantimentRateLimited(SantimentError):
    """Santiment's API call (or response size) limit was reached.

    ``retry_after_s`` is the wait the server asked for, when it said one.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MetricNotAllowed(SantimentError):
    """The server will not serve this metric for this slug to this plan.

    ``kind`` is ``"plan"`` (the plan lacks the metric), ``"history"`` (the requested range lies
    outside the history the plan may read) or ``"unknown"`` (the server does not know the metric
    or has none for the slug). ``reason`` is the server's own explanation, on one line.
    """

    def __init__(self, metric: str, slug: str, reason: str, kind: RestrictionKind) -> None:
        what = {
            "plan": "is not available on this plan",
            "history": "is outside the history this plan allows",
            "unknown": "is not offered",
        }[kind]
        super().__init__(f"Santiment metric {metric!r} for slug {slug!r} {what}: {reason}")
        self.metric = metric
        self.slug = slug
        self.reason = reason
        self.kind = kind


def use_santiment_endpoint(url: str | None) -> None:
    """Point sanpy at ``url`` (a GraphQL endpoint such as ``http://127.0.0.1:8080/graphql``).

    sanpy reads ``SANBASE_GQL_HOST`` once at import; after import the documented way to move it
    is ``san.graphql.DEFAULT_TRANSPORT.base_url``, which this sets. ``None`` restores the endpoint
    sanpy started with. :class:`SanpyClient` calls this itself before each request.
    """
    san.graphql.DEFAULT_TRANSPORT.base_url = url or SANPY_DEFAULT_ENDPOINT


class SanpyClient:
    """Runs sanpy queries off the event loop with one source's settings; translates errors.

    ``cfg.retries`` is both sanpy's transport retry count (connection errors, 5xx, with sanpy's
    backoff) and the number of times a rate-limited request is tried again after the wait the
    server asks for, as long as that wait is at most ``max_rate_limit_wait_s``.
    """

    def __init__(
        self,
        cfg: SantimentConfig,
        api_key: SecretStr | None = None,
        *,
        max_rate_limit_wait_s: float = 60.0,
    ) -> None:
        self._cfg = cfg
        self._api_key = api_key
        self._max_rate_limit_wait_s = max_rate_limit_wait_s

    @property
    def endpoint(self) -> str:
        """The GraphQL endpoint this client talks to."""
        return self._cfg.api_url or SANPY_DEFAULT_ENDPOINT

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an API key."""
        return self._api_key is not None

    async def request(
        self,
        query: Callable[[], _T],
        *,
        what: str,
        metric: str | None = None,
        slug: str | None = None,
    ) -> _T:
        """Run the sanpy ``query`` in a thread under the sanpy lock; translate errors; wait out
        rate limits. ``what`` names the data in messages.

        ``SanEmptyResultError`` passes through untranslated: callers turn it into "no data".
        """
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(self._call_locked, query)
            except SanEmptyResultError:
                raise
            except SanError as exc:
                error = self._translate(exc, what=what, metric=metric, slug=slug)
            if isinstance(error, SantimentRateLimited) and attempt < self._cfg.retries:
                wait = error.retry_after_s if error.retry_after_s is not None else 2.0**attempt
                if wait <= self._max_rate_limit_wait_s:
                    attempt += 1
                    log.warning(
                        "Santiment rate limit on %s; retry %d/%d in %.0f s",
                        what,
                        attempt,
                        self._cfg.retries,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    continue
            # Not chained: sanpy's message may carry the server's echo of the API key.
            raise error from None

    def _call_locked(self, query: Callable[[], _T]) -> _T:
        """In a worker thread: apply this client's sanpy settings, call, restore the previous."""
        with _SANPY_LOCK:
            saved = (
                san.ApiConfig.api_key,
                san.ApiConfig.request_retry_count,
                san.graphql.DEFAULT_TRANSPORT.base_url,
            )
            try:
                san.ApiConfig.api_key = (
                    self._api_key.get_secret_value() if self._api_key is not None else None
                )
                san.ApiConfig.request_retry_count = self._cfg.retries
                use_santiment_endpoint(self._cfg.api_url)
                return query()
            finally:
                (
                    san.ApiConfig.api_key,
                    san.ApiConfig.request_retry_count,
                    san.graphql.DEFAULT_TRANSPORT.base_url,
                ) = saved

    def _translate(
        self, exc: SanError, *, what: str, metric: str | None, slug: str | None
    ) -> SantimentError:
        """Our exception, with a one-line message, for a sanpy error."""
        reason = _server_reason(exc, self._api_key)
        if isinstance(exc, SanAuthError) or _BAD_KEY.search(reason):
            if self._api_key is None:
                return SantimentAuthError(
                    f"Santiment refused the request for {what} without an API key ({reason}); "
                    f"set {API_KEY_ENV}"
                )
            return SantimentAuthError(
                f"Santiment rejected the API key ({reason}); check {API_KEY_ENV}"
            )
        if isinstance(exc, SanRateLimitError | SanResponseSizeLimitError):
            match = _TRY_AGAIN.search(reason)
            retry_after = float(match.group(1)) if match else None
            headline = _LIMIT_HEADLINE.search(reason)
            return SantimentRateLimited(
                f"Santiment limit reached while fetching {what}: "
                f"{headline.group(0) if headline else reason}",
                retry_after,
            )
        if isinstance(exc, SanServerError):
            return SantimentError(f"Santiment server error while fetching {what}: {reason}")
        if isinstance(exc, SanTransportError):
            return SantimentError(f"cannot reach Santiment at {self.endpoint}: {reason}")
        kind = _restriction_kind(reason)
        if kind is not None and metric is not None and slug is not None:
            if self._api_key is None and kind in ("plan", "history"):
                reason += (
                    f" (no API key is set, so Santiment served this as its free plan; set "
                    f"{API_KEY_ENV} for a paid plan's metrics and history)"
                )
            return MetricNotAllowed(metric, slug, reason, kind)
        return SantimentError(f"Santiment query for {what} failed: {reason}")


def _server_reason(exc: SanError, api_key: SecretStr | None) -> str:
    """The server's explanation inside a sanpy error message, on one line, key redacted.

    sanpy formats GraphQL errors as ``"GraphQL error occurred running query <q> \\n errors: <e>"``
    and HTTP errors as ``"Error running query. Status code: <n>.\\n <e>\\n <q>"``; the query text
    is noise for our messages and is dropped.
    """
    text = str(exc)
    if "\n errors: " in text:
        text = text.rsplit("\n errors: ", 1)[1]
    elif (match := _STATUS_ERROR.search(text)) is not None:
        details = match.group(2).strip()
        text = f"HTTP {match.group(1)}" + (f": {details}" if details else "")
    text = _PATH_SUFFIX.sub("", text)
    # Keep the first paragraph (the reason) and the allowed-time section; drop the boilerplate.
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = " ".join(
        paragraphs[:1] + [p for p in paragraphs[1:] if "allowed time restrictions" in p.lower()]
    )
    if api_key is not None and (secret := api_key.get_secret_value()):
        text = text.replace(secret, "***")
    text = _APIKEY_ECHO.sub("Apikey '***'", text)
    text = " ".join(text.split())
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    return text or type(exc).__name__


def _restriction_kind(reason: str) -> RestrictionKind | None:
    """Which kind of "not for you" the server's reason expresses, if any."""
    lowered = reason.lower()
    for marker, kind in _RESTRICTION_MARKERS:
        if marker in lowered:
            return kind
    return None
