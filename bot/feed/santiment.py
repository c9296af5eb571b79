"""Santiment on-chain and social metrics through sanpy, stored in ``metrics.db``.

sanpy is synchronous (``requests``) and keeps its settings in module globals (the API key on
``san.ApiConfig``, the endpoint on ``san.graphql.DEFAULT_TRANSPORT``). So every sanpy call runs in
a worker thread (``asyncio.to_thread``) while holding one process-wide lock; inside the lock the
calling :class:`SantimentSource` applies its own endpoint, key and retry count and restores the
previous values afterwards. Several sources (or tests with several fake servers) can therefore
share the process, and the event loop never waits on the network.

sanpy's errors are translated here, at the boundary, into the exceptions below with one-line
messages. The API key never appears in a log line or an exception message: the server echoes it
in its "not valid" answer, so every server text is redacted and translated errors do not chain
sanpy's original exception.

A daily value describes the UTC day starting at ``observed_at``; it becomes known at the end of
that day plus the configured publication lag: ``known_at = observed_at + 1 day + lag``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeVar

import pandas as pd
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

from bot.store.metrics import MetricStore
from bot.timeframes import DAY_MS, floor_ms, ms_to_iso
from config.schema import SantimentConfig

log = logging.getLogger(__name__)

SOURCE = "santiment"
"""``source`` column of every row this module writes to ``metrics.db``."""

API_KEY_ENV = "CRYPTORLPM_SANTIMENT_API_KEY"
"""Environment variable that carries the Santiment API key (see ``config.schema.Secrets``)."""

SANPY_DEFAULT_ENDPOINT: str = san.env_vars.SANBASE_GQL_HOST
"""The endpoint sanpy read from ``SANBASE_GQL_HOST`` at import (the public API by default)."""

DAILY_COLUMNS = ["observed_at", "value"]

RestrictionKind = Literal["plan", "history", "unknown"]
ProgressCallback = Callable[[str, int, int], None]
"""Called after each metric of a download with ``(metric, done, total)``."""

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


@dataclass(frozen=True, slots=True)
class SkippedMetric:
    """A metric a download left out, with the server's reason."""

    metric: str
    slug: str
    kind: RestrictionKind
    reason: str

    def __str__(self) -> str:
        return f"{self.metric} ({self.slug}): {self.reason}"


@dataclass(frozen=True)
class SantimentReport:
    """What one :meth:`SantimentSource.download` did for one asset."""

    asset: str
    slug: str
    written: dict[str, int] = field(default_factory=dict)
    """Rows written per metric (0 when a metric was already up to date or had no new data)."""
    skipped: tuple[SkippedMetric, ...] = ()
    """Metrics the plan or the server did not allow, with the server's reason."""

    @property
    def total_written(self) -> int:
        """Rows written over all metrics."""
        return sum(self.written.values())

    def summary(self) -> str:
        """A few human-readable lines: totals first, then one line per skipped metric."""
        lines = [
            f"{self.asset} ({self.slug}): {self.total_written} rows over "
            f"{len(self.written)} metrics, {len(self.skipped)} skipped"
        ]
        lines += [f"  skipped {item}" for item in self.skipped]
        return "\n".join(lines)


def use_santiment_endpoint(url: str | None) -> None:
    """Point sanpy at ``url`` (a GraphQL endpoint such as ``http://127.0.0.1:8080/graphql``).

    sanpy reads ``SANBASE_GQL_HOST`` once at import; after import the documented way to move it
    is ``san.graphql.DEFAULT_TRANSPORT.base_url``, which this sets. ``None`` restores the endpoint
    sanpy started with. :class:`SantimentSource` calls this itself before each request.
    """
    san.graphql.DEFAULT_TRANSPORT.base_url = url or SANPY_DEFAULT_ENDPOINT


def empty_daily_frame() -> pd.DataFrame:
    """A frame with the columns and dtypes of :meth:`SantimentSource.fetch_daily`, no rows."""
    return pd.DataFrame(
        {
            "observed_at": pd.Series([], dtype="int64"),
            "value": pd.Series([], dtype="float64"),
        }
    )


class SantimentSource:
    """Downloads daily Santiment metrics with sanpy, without blocking the event loop.

    ``cfg.api_url`` picks the endpoint (``None``: sanpy's default), ``cfg.retries`` is both
    sanpy's transport retry count (connection errors, 5xx, with sanpy's backoff) and the number of
    times a rate-limited request is tried again after the wait the server asks for, as long as
    that wait is at most ``max_rate_limit_wait_s``.
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

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "none"
        return f"SantimentSource(endpoint={self.endpoint!r}, api_key={key})"

    @property
    def endpoint(self) -> str:
        """The GraphQL endpoint this source talks to."""
        return self._cfg.api_url or SANPY_DEFAULT_ENDPOINT

    async def list_metrics(self, slug: str) -> list[str]:
        """Names of the metrics Santiment offers for ``slug`` (``projectBySlug.availableMetrics``).

        The list says what exists for the project, not what the plan may read.
        """
        try:
            names = await self._request(
                partial(san.available_metrics_for_slug, slug), what=f"the metric list of {slug!r}"
            )
        except SanEmptyResultError:
            return []
        return sorted(set(names or []))

    async def fetch_daily(self, metric: str, slug: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Daily values of ``metric`` for ``slug`` for the days starting in ``[start_ms, end_ms)``.

        Returns columns ``observed_at`` (int64 ms, 00:00 UTC of the day) and ``value`` (float64),
        sorted, one row per day; days Santiment has no value for are absent. Raises
        :class:`MetricNotAllowed` when the plan does not allow the metric or range, and the other
        :class:`SantimentError` subclasses for credentials, rate limits and failures.
        """
        start = floor_ms(start_ms, DAY_MS)
        if end_ms <= start:
            return empty_daily_frame()
        try:
            query = partial(
                san.get,
                metric,
                slug=slug,
                from_date=ms_to_iso(start),
                to_date=ms_to_iso(end_ms),
                interval="1d",
            )
            raw = await self._request(
                query, what=f"metric {metric!r} for slug {slug!r}", metric=metric, slug=slug
            )
        except SanEmptyResultError:
            return empty_daily_frame()
        return _daily_frame(raw, start, end_ms)

    async def download(
        self,
        asset: str,
        slug: str,
        metrics: Sequence[str],
        start_ms: int,
        end_ms: int,
        store: MetricStore,
        *,
        publication_lag_ms: int,
        progress: ProgressCallback | None = None,
    ) -> SantimentReport:
        """Download ``metrics`` of ``slug`` into ``store`` under ``asset``; resumable.

        Each metric starts at the day after its newest stored day (or at ``start_ms``), so a
        rerun only fetches new days and never rewrites a value that was already known. Rows get
        ``known_at = observed_at + 1 day + publication_lag_ms`` and source ``"santiment"``, and are
        written per metric, so an interrupted download keeps what it finished. A metric the
        plan does not allow is skipped with a warning naming metric, slug and the server's reason;
        credential, rate-limit and other errors stop the download.
        """
        if publication_lag_ms < 0:
            raise ValueError(f"publication_lag_ms must be >= 0, got {publication_lag_ms}")
        first_day = floor_ms(start_ms, DAY_MS)
        written: dict[str, int] = {}
        skipped: list[SkippedMetric] = []
        for done, metric in enumerate(metrics, start=1):
            last = await store.last_observed_at(asset, metric)
            begin = first_day if last is None else max(first_day, last + DAY_MS)
            try:
                frame = await self.fetch_daily(metric, slug, begin, end_ms)
            except MetricNotAllowed as exc:
                log.warning("%s (skipped)", exc)
                skipped.append(SkippedMetric(metric, slug, exc.kind, exc.reason))
            else:
                observed = frame["observed_at"].to_numpy()
                rows = zip(
                    [asset] * len(frame),
                    [metric] * len(frame),
                    observed.tolist(),
                    (observed + DAY_MS + publication_lag_ms).tolist(),
                    frame["value"].tolist(),
                    strict=True,
                )
                written[metric] = await store.upsert_metrics(rows, SOURCE)
                log.info("Santiment %s/%s: %d new days", slug, metric, written[metric])
            if progress is not None:
                progress(metric, done, len(metrics))
        return SantimentReport(asset, slug, written, tuple(skipped))

    # -- sanpy plumbing -------------------------------------------------------------------------

    async def _request(
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
        """In a worker thread: apply this source's sanpy settings, call, restore the previous."""
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
        if isinstance(exc, SanAuthError):
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


def _daily_frame(raw: pd.DataFrame, start_ms: int, end_ms: int) -> pd.DataFrame:
    """sanpy's ``datetime``-indexed ``value`` frame as ``observed_at``/``value`` day rows."""
    if raw is None or raw.empty or "value" not in raw.columns:
        return empty_daily_frame()
    index = pd.DatetimeIndex(raw.index)
    if index.tz is None:
        index = index.tz_localize("UTC")
    observed = index.tz_convert("UTC").as_unit("ms").asi8.astype("int64")
    frame = pd.DataFrame(
        {
            "observed_at": observed - observed % DAY_MS,
            "value": pd.to_numeric(raw["value"], errors="coerce").to_numpy(dtype="float64"),
        }
    )
    # Santiment marks a missing day with null; the store has no row for such a day.
    frame = frame.dropna(subset=["value"])
    frame = frame[(frame["observed_at"] >= start_ms) & (frame["observed_at"] < end_ms)]
    frame = frame.drop_duplicates("observed_at", keep="last").sort_values("observed_at")
    return frame.reset_index(drop=True).astype({"observed_at": "int64", "value": "float64"})
