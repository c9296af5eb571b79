"""Santiment on-chain and social metrics through sanpy, stored in ``metrics.db``.

:class:`SantimentSource` lists, fetches and downloads daily metrics; the sanpy plumbing (worker
threads, process-wide settings, error translation, API key redaction) lives in
:mod:`bot.feed.santiment_client`, whose public names are importable from here too.

When a value became known (``known_at``), by :func:`bot.store.metrics.daily_known_at`:

* a daily value describes the UTC day starting at ``observed_at``; nominally it is known at the
  end of that day plus the configured publication lag, ``observed_at + 1 day + lag``;
* a value fetched *live*, within ``lag + 2 days`` of that nominal time, is stored with
  ``known_at = max(nominal, fetched_at)``: the running bot had it no earlier, so a replay of that
  period must not see it earlier either (Santiment may publish late, and a plan may hold the
  newest days back);
* a value fetched later than that is a backfill of history. When Santiment first published it is
  unknown, and the nominal rule is kept: **the assumption is that Santiment published on time**.
  Backtests over backfilled history are therefore as optimistic as the configured lag; raise
  ``metrics.publication_lag_hours`` if a metric is known to arrive late.

Rows are written with source ``"santiment"``; a download resumes from its own rows only and
refuses to write into a series another source (the synthetic market, a CSV file) already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import pandas as pd
import san
from pydantic import SecretStr
from san.error import SanEmptyResultError

from bot.feed.santiment_client import (
    API_KEY_ENV,
    SANPY_DEFAULT_ENDPOINT,
    MetricNotAllowed,
    RestrictionKind,
    SanpyClient,
    SantimentAuthError,
    SantimentError,
    SantimentRateLimited,
    use_santiment_endpoint,
)
from bot.store.metrics import MetricStore, daily_known_at
from bot.timeframes import DAY_MS, floor_ms, ms_to_iso
from config.schema import SantimentConfig

__all__ = [
    "API_KEY_ENV",
    "SANPY_DEFAULT_ENDPOINT",
    "SOURCE",
    "MetricNotAllowed",
    "SantimentAuthError",
    "SantimentError",
    "SantimentRateLimited",
    "SantimentReport",
    "SantimentSource",
    "SkippedMetric",
    "empty_daily_frame",
    "use_santiment_endpoint",
]

log = logging.getLogger(__name__)

SOURCE = "santiment"
"""``source`` column of every row this module writes to ``metrics.db``."""

ProgressCallback = Callable[[str, int, int], None]
"""Called after each metric of a download with ``(metric, done, total)``."""


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


def empty_daily_frame() -> pd.DataFrame:
    """A frame with the columns and dtypes of :meth:`SantimentSource.fetch_daily`, no rows."""
    return pd.DataFrame(
        {
            "observed_at": pd.Series([], dtype="int64"),
            "value": pd.Series([], dtype="float64"),
        }
    )


def _wall_clock_ms() -> int:
    from bot.clock import WallClock

    return WallClock().now_ms()


class SantimentSource:
    """Downloads daily Santiment metrics with sanpy, without blocking the event loop.

    ``cfg.api_url`` picks the endpoint (``None``: sanpy's default), ``cfg.retries`` is both
    sanpy's transport retry count (connection errors, 5xx, with sanpy's backoff) and the number of
    times a rate-limited request is tried again after the wait the server asks for, as long as
    that wait is at most ``max_rate_limit_wait_s``. ``now_ms`` (default: the wall clock) stamps
    when values were fetched, for their ``known_at``.
    """

    def __init__(
        self,
        cfg: SantimentConfig,
        api_key: SecretStr | None = None,
        *,
        max_rate_limit_wait_s: float = 60.0,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._client = SanpyClient(cfg, api_key, max_rate_limit_wait_s=max_rate_limit_wait_s)
        self._now_ms = now_ms or _wall_clock_ms

    def __repr__(self) -> str:
        key = "set" if self._client.has_api_key else "none"
        return f"SantimentSource(endpoint={self.endpoint!r}, api_key={key})"

    @property
    def endpoint(self) -> str:
        """The GraphQL endpoint this source talks to."""
        return self._client.endpoint

    async def list_metrics(self, slug: str) -> list[str]:
        """Names of the metrics Santiment offers for ``slug`` (``projectBySlug.availableMetrics``).

        The list says what exists for the project, not what the plan may read.
        """
        try:
            names = await self._client.request(
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
            raw = await self._client.request(
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

        Each metric starts at the day after its newest day stored *by this source* (or at
        ``start_ms``), so a rerun only fetches new days and never rewrites a value that was
        already known. Rows get ``known_at`` by the rule of the module docstring and source
        ``"santiment"``, and are written per metric, so an interrupted download keeps what it
        finished. A metric the plan does not allow is skipped with a warning naming metric, slug
        and the server's reason; a metric whose series another source already holds raises
        :class:`SantimentError` (mixing sources in one series would corrupt it); credential,
        rate-limit and other errors stop the download.
        """
        if publication_lag_ms < 0:
            raise ValueError(f"publication_lag_ms must be >= 0, got {publication_lag_ms}")
        first_day = floor_ms(start_ms, DAY_MS)
        written: dict[str, int] = {}
        skipped: list[SkippedMetric] = []
        for done, metric in enumerate(metrics, start=1):
            others = [s for s in await store.sources(asset, metric) if s != SOURCE]
            if others:
                raise SantimentError(
                    f"{store.path} already holds {asset} {metric!r} from source "
                    f"{', '.join(map(repr, others))}; Santiment values would be mixed into that "
                    "series. Keep Santiment data in a data.dir of its own"
                )
            last = await store.last_observed_at(asset, metric, source=SOURCE)
            begin = first_day if last is None else max(first_day, last + DAY_MS)
            try:
                frame = await self.fetch_daily(metric, slug, begin, end_ms)
            except MetricNotAllowed as exc:
                log.warning("%s (skipped)", exc)
                skipped.append(SkippedMetric(metric, slug, exc.kind, exc.reason))
            else:
                fetched_at = self._now_ms()
                observed = frame["observed_at"].to_numpy()
                known = daily_known_at(observed, publication_lag_ms, fetched_at_ms=fetched_at)
                rows = zip(
                    [asset] * len(frame),
                    [metric] * len(frame),
                    observed.tolist(),
                    known.tolist(),
                    frame["value"].tolist(),
                    strict=True,
                )
                written[metric] = await store.upsert_metrics(rows, SOURCE)
                log.info("Santiment %s/%s: %d new days", slug, metric, written[metric])
            if progress is not None:
                progress(metric, done, len(metrics))
        return SantimentReport(asset, slug, written, tuple(skipped))


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
