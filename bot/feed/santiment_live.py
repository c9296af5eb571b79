"""On-chain metrics inside the daemon: every plugged module's selected series, kept fresh.

The daemon asks Santiment (sanpy, in a worker thread) for the series its modules read: once at
start, before the modules warm up, and then every ``[live].metrics_refresh_minutes`` (a refresh
runs in the background after a cycle, never during one). New values go to ``metrics.db`` with
the time the daemon really had them:

- at start, a backfill of history: :func:`~bot.store.metrics.daily_known_at` (the day's end plus
  the publication lag, or the fetch time for a value fetched within two days of that);
- while running, the time of the write, and never at or before the last close already handed to
  the engine (:class:`MetricGate`). A value the daemon did not have at a close is therefore
  never used at that close, live or in a later replay of the same period; and a late value
  (Santiment late, or its free plan holding back the newest days) is used from when it came.

What a refresh could not do is kept per series (:class:`SeriesFreshness`): a series with no
Santiment slug, one another source (CSV, the synthetic market) stored, a metric the plan does
not allow, an error. How old Santiment's newest values are is measured after every refresh;
when they are older than ``[live].metric_max_age_days`` :meth:`MetricRefresher.plan_note` says
so (without an API key: the free plan, which cuts off the most recent days).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bot.feed.santiment import SOURCE, MetricNotAllowed, SantimentError, SantimentSource
from bot.feed.santiment_client import API_KEY_ENV
from bot.store.metrics import MetricStore, daily_known_at
from bot.tasks import stop_task
from bot.timeframes import DAY_MS, ms_to_iso
from config.schema import AppConfig

log = logging.getLogger(__name__)

Inputs = Mapping[str, Sequence[tuple[str, str]]]
"""Coin -> the ``(asset, name)`` metric series its module reads."""


class MetricGate:
    """Orders live metric writes against their publication to the engine.

    The driver hands the engine, at the cycle deciding at ``ts``, the values known in
    ``(published_until, ts]`` and moves ``published_until`` to ``ts``, under :attr:`lock`. A
    live write takes the same lock and stamps ``known_at`` after ``published_until``: a value
    written too late for a close is used at the next one, never silently lost.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.published_until: int | None = None


@dataclass
class SeriesFreshness:
    """What the daemon knows of one metric series it refreshes."""

    asset: str
    name: str
    slug: str | None
    source: str | None = None
    """Who stored the series (``santiment``, ``csv``, ``synthetic``); None while empty."""
    last_observed: int | None = None
    """The day (00:00 UTC) of the newest stored value."""
    last_known: int | None = None
    """When that value became known."""
    last_value: float | None = None
    checked_ms: int | None = None
    """When Santiment last answered for it."""
    written: int = 0
    """Values the last refresh wrote."""
    problem: str | None = None
    """Why it is not refreshed, or why the last refresh failed."""

    @property
    def label(self) -> str:
        """``asset:name``."""
        return f"{self.asset}:{self.name}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, with readable times."""
        return {
            "metric": self.label,
            "source": self.source,
            "last_day": None if self.last_observed is None else ms_to_iso(self.last_observed)[:10],
            "known_at": None if self.last_known is None else ms_to_iso(self.last_known),
            "value": self.last_value,
            "checked": None if self.checked_ms is None else ms_to_iso(self.checked_ms),
            "problem": self.problem,
        }


class MetricRefresher:
    """Refreshes the modules' metric series from Santiment into ``metrics.db``.

    ``inputs()`` says which series each coin reads (the daemon points it at its modules);
    ``now_ms`` is the daemon's clock (the exchange's). ``source`` is None when nothing can be
    fetched (then every series says why).
    """

    def __init__(
        self,
        cfg: AppConfig,
        source: SantimentSource | None,
        store: MetricStore,
        gate: MetricGate,
        now_ms: Callable[[], int],
        *,
        has_api_key: bool = False,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.store = store
        self.gate = gate
        self.now_ms = now_ms
        self.has_api_key = has_api_key
        minutes = cfg.live.metrics_refresh_minutes
        self.every_ms = None if minutes is None else int(minutes * 60_000)
        self.inputs: Callable[[], Inputs] = dict
        self.on_refreshed: Callable[[], Awaitable[None]] | None = None
        """Awaited after every refresh (the daemon records the freshness)."""
        self.refreshes = 0
        self.next_due: int | None = None
        self._series: dict[tuple[str, str], SeriesFreshness] = {}
        self._task: asyncio.Task[None] | None = None
        self._warned: set[tuple[tuple[str, str], str]] = set()
        self._noted: str | None = None

    # -- scheduling -----------------------------------------------------------------------------

    def kick(self, now_ms: int) -> bool:
        """Start a refresh in the background when one is due and none runs; True if started."""
        if self.every_ms is None or (self._task is not None and not self._task.done()):
            return False
        if self.next_due is not None and now_ms < self.next_due:
            return False
        self.next_due = now_ms + self.every_ms
        self._task = asyncio.create_task(self._background())
        return True

    async def _background(self) -> None:
        try:
            await self.refresh()
        except Exception:  # a refresh never takes the daemon down; the next one tries again
            log.exception("metric refresh failed")

    async def idle(self) -> None:
        """Return once no refresh runs."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def close(self) -> None:
        """Stop a refresh in progress."""
        if self._task is not None and not self._task.done():
            await stop_task(self._task)

    # -- one refresh ----------------------------------------------------------------------------

    def wanted(self) -> list[tuple[str, str]]:
        """Every series some coin's module reads, sorted."""
        return sorted({tuple(s) for series in self.inputs().values() for s in series})  # type: ignore[misc]

    async def refresh(self, *, initial: bool = False) -> int:
        """Fetch what is new of every wanted series and store it; returns the values written.

        ``initial``: the start-up backfill (history, :func:`daily_known_at`), before the modules
        warm up; otherwise values are known from the moment they are written (see the module
        docstring). Failures are kept per series and logged once per reason.
        """
        written = 0
        now = self.now_ms()
        for asset, name in self.wanted():
            state = self._state(asset, name)
            try:
                written += await self._refresh_series(state, now, initial=initial)
            except (MetricNotAllowed, SantimentError) as exc:
                self._problem(state, str(exc))
            await self._describe_stored(state)
        self.refreshes += 1
        if self.next_due is None and self.every_ms is not None:
            self.next_due = now + self.every_ms
        note = self.plan_note(self.now_ms())
        if note is not None and self._noted is None:
            log.warning("%s", note)
        elif note is None and self._noted is not None:
            log.info("Santiment's values are recent again")
        self._noted = note
        if self.on_refreshed is not None:
            await self.on_refreshed()
        return written

    def _state(self, asset: str, name: str) -> SeriesFreshness:
        key = (asset, name)
        if key not in self._series:
            slug = self.cfg.santiment.slugs.get(asset)
            self._series[key] = SeriesFreshness(asset, name, slug)
        return self._series[key]

    async def _refresh_series(self, state: SeriesFreshness, now: int, *, initial: bool) -> int:
        state.written = 0
        if self.source is None:
            self._problem(state, "not refreshed: the daemon has no Santiment source")
            return 0
        if state.slug is None:
            self._problem(
                state,
                f"not refreshed: no Santiment slug for {state.asset} ([santiment].slugs)",
            )
            return 0
        others = [s for s in await self.store.sources(state.asset, state.name) if s != SOURCE]
        if others:
            self._problem(
                state,
                f"not refreshed: {self.store.path.name} holds it from {', '.join(others)} "
                "(one source per series; keep Santiment data in a data.dir of its own)",
            )
            return 0
        last = await self.store.last_observed_at(state.asset, state.name, source=SOURCE)
        begin = now - self.cfg.live.warmup_days * DAY_MS if last is None else last + DAY_MS
        frame = await self.source.fetch_daily(state.name, state.slug, begin, now)
        state.checked_ms = self.now_ms()
        state.problem = None
        if frame.empty:
            return 0
        observed = frame["observed_at"].to_numpy(dtype="int64")
        values = frame["value"].tolist()
        lag = self.cfg.metrics.publication_lag_ms
        async with self.gate.lock:
            fetched = self.now_ms()
            if initial:
                known = daily_known_at(observed, lag, fetched_at_ms=fetched)
            else:
                floor = fetched
                if self.gate.published_until is not None:
                    floor = max(floor, self.gate.published_until + 1)
                known = np.maximum(observed + DAY_MS + lag, floor)
            rows = [
                (state.asset, state.name, int(o), int(k), float(v))
                for o, k, v in zip(observed.tolist(), known.tolist(), values, strict=True)
            ]
            state.written = await self.store.upsert_metrics(rows, SOURCE)
        log.info(
            "Santiment %s/%s: %d new day(s), newest %s",
            state.slug,
            state.name,
            state.written,
            ms_to_iso(int(observed[-1]))[:10],
        )
        return state.written

    async def _describe_stored(self, state: SeriesFreshness) -> None:
        sources = await self.store.sources(state.asset, state.name)
        state.source = sources[0] if len(sources) == 1 else (", ".join(sources) or None)
        latest = await self.store.latest_known(self.now_ms() + 1, [(state.asset, state.name)])
        found = latest.get((state.asset, state.name))
        if found is not None:
            state.last_observed, state.last_known, state.last_value, _ = found

    def _problem(self, state: SeriesFreshness, text: str) -> None:
        state.problem = text
        key = ((state.asset, state.name), text)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("metric %s: %s", state.label, text)

    # -- what it knows ----------------------------------------------------------------------------

    def freshness(self) -> dict[tuple[str, str], SeriesFreshness]:
        """The state of every series refreshed so far."""
        return dict(self._series)

    def plan_note(self, now_ms: int) -> str | None:
        """A line when Santiment's newest values are older than ``metric_max_age_days`` (the
        free plan's cut-off when no key is set); None when they are recent or unknown."""
        ages = [
            now_ms - (s.last_observed + DAY_MS)
            for s in self._series.values()
            if s.source == SOURCE and s.last_observed is not None and s.checked_ms is not None
        ]
        limit = self.cfg.live.metric_max_age_days * DAY_MS
        if not ages or min(ages) <= limit:
            return None
        days = min(ages) / DAY_MS
        if not self.has_api_key:
            return (
                f"Santiment's newest values are {days:.0f} days old: without {API_KEY_ENV} it "
                "serves the free plan, which cuts off the most recent days; modules reading "
                "them are not ready"
            )
        return (
            f"Santiment's newest values are {days:.0f} days old (its plan or the metrics lag); "
            "modules reading them are not ready"
        )
