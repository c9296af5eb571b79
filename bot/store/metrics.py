"""``metrics.db``: metric values with the time they describe and the time they became known.

``observed_at`` is the start of the period a value describes (00:00 UTC of its day for a daily
value); ``known_at`` is when a live system could first have read it. Replays publish metrics at
``known_at``; training joins them to bars on ``known_at`` too, so neither can see the future.
:func:`daily_known_at` is the one rule every source (CSV files, Santiment, the synthetic market)
uses to set it.

Each row records its ``source``. A series ``(asset, name)`` holds one value per day whatever the
source (the primary key), so writers must not mix sources into one series; resuming a download
asks for the newest row *of its own source* (:meth:`MetricStore.last_observed_at`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bot.events import Metric
from bot.store.sqlite import SqliteStore
from bot.timeframes import DAY_MS

METRIC_COLUMNS = ["asset", "name", "observed_at", "known_at", "value"]

MIGRATIONS = [
    """
    CREATE TABLE metric (
        asset       TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        observed_at INTEGER NOT NULL,
        known_at    INTEGER NOT NULL,
        value       REAL    NOT NULL,
        source      TEXT    NOT NULL,
        PRIMARY KEY (asset, name, observed_at),
        CHECK (known_at >= observed_at)
    ) WITHOUT ROWID;
    CREATE INDEX metric_known ON metric (known_at, asset, name);
    """,
]

LIVE_FETCH_WINDOW_MS = 2 * DAY_MS
"""How long after its nominal ``known_at`` (beyond the publication lag) a fetched value still
counts as fetched live; see :func:`daily_known_at`."""


def daily_known_at(
    observed_at: np.ndarray | pd.Series | Sequence[int],
    publication_lag_ms: int,
    fetched_at_ms: int | None = None,
) -> np.ndarray:
    """``known_at`` (int64 epoch ms) of daily values observed at ``observed_at``.

    Nominal rule: a value for day D is known at the end of D plus the publication lag,
    ``observed_at + 1 day + publication_lag_ms``.

    ``fetched_at_ms`` is when this process received the values. A value fetched *live*, that is
    no later than ``publication_lag_ms + 2 days`` after its nominal time (or before it), is known
    at ``max(nominal, fetched_at_ms)``: the bot had it no earlier, so a replay of that period must
    not see it earlier either. A value fetched longer after its nominal time is a backfill of
    history: when the source really published it is unknown, and it keeps the nominal rule (the
    assumption being that the source published on time). Without ``fetched_at_ms`` (files,
    generated data) the nominal rule applies.
    """
    if publication_lag_ms < 0:
        raise ValueError(f"publication_lag_ms must be >= 0, got {publication_lag_ms}")
    nominal = np.asarray(observed_at, dtype="int64") + DAY_MS + int(publication_lag_ms)
    if fetched_at_ms is None:
        return nominal
    fetched = np.int64(fetched_at_ms)
    live = fetched - nominal <= int(publication_lag_ms) + LIVE_FETCH_WINDOW_MS
    return np.where(live, np.maximum(nominal, fetched), nominal).astype("int64")


@dataclass(frozen=True, slots=True)
class MetricCoverage:
    """What the store holds for one metric of one asset."""

    asset: str
    name: str
    source: str
    first_observed_at: int
    last_observed_at: int
    rows: int


class MetricStore(SqliteStore):
    """Async access to ``metrics.db``. Use ``async with await MetricStore.open(path) as store``."""

    MIGRATIONS = MIGRATIONS

    async def upsert_metrics(self, rows: Iterable[Sequence[object]], source: str) -> int:
        """Upsert ``(asset, name, observed_at, known_at, value)`` rows in one transaction.

        Returns the number of rows written.
        """
        data = [
            (str(a), str(n), int(o), int(k), float(v), source)  # type: ignore[arg-type]
            for a, n, o, k, v in rows
        ]
        if not data:
            return 0
        try:
            await self._db.executemany(
                "INSERT INTO metric VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(asset, name, observed_at) DO UPDATE SET "
                "known_at=excluded.known_at, value=excluded.value, source=excluded.source",
                data,
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return len(data)

    async def upsert_frame(self, frame: pd.DataFrame, source: str) -> int:
        """Upsert a frame with the columns of :data:`METRIC_COLUMNS`."""
        return await self.upsert_metrics(
            frame[METRIC_COLUMNS].itertuples(index=False, name=None), source
        )

    async def last_observed_at(
        self, asset: str, name: str, source: str | None = None
    ) -> int | None:
        """``observed_at`` of the newest stored value of one metric, or ``None``.

        With ``source``, only that source's rows count: a download resumes from its own rows,
        never from values another source wrote under the same name.
        """
        sql = "SELECT MAX(observed_at) FROM metric WHERE asset=? AND name=?"
        args: list[object] = [asset, name]
        if source is not None:
            sql += " AND source=?"
            args.append(source)
        async with self._db.execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def sources(self, asset: str | None = None, name: str | None = None) -> list[str]:
        """The sources that wrote rows (of ``asset``/``name`` when given), sorted."""
        sql = "SELECT DISTINCT source FROM metric WHERE 1=1"
        args: list[object] = []
        for column, value in (("asset", asset), ("name", name)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        async with self._db.execute(sql + " ORDER BY source", args) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def names(self, asset: str) -> list[str]:
        """Names of the metrics stored for ``asset``, sorted."""
        async with self._db.execute(
            "SELECT DISTINCT name FROM metric WHERE asset=? ORDER BY name", (asset,)
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def assets(self) -> list[str]:
        """Assets with at least one stored metric, sorted."""
        async with self._db.execute("SELECT DISTINCT asset FROM metric ORDER BY asset") as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def read_metrics(
        self,
        assets: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        known_before: int | None = None,
    ) -> pd.DataFrame:
        """Long frame of :data:`METRIC_COLUMNS`, sorted by asset, name, observed_at.

        ``known_before`` keeps only values known strictly before that time.
        """
        sql, args = _metric_query(assets, names, None, known_before)
        async with self._db.execute(sql + " ORDER BY asset, name, observed_at", args) as cursor:
            rows = await cursor.fetchall()
        frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
        return frame.astype(
            {
                "asset": "str",
                "name": "str",
                "observed_at": "int64",
                "known_at": "int64",
                "value": "float64",
            }
        )

    async def iter_metrics(
        self,
        assets: Sequence[str] | None = None,
        start: int | None = None,
        end: int | None = None,
        batch: int = 10_000,
    ) -> AsyncIterator[Metric]:
        """``Metric`` events by ``known_at``, asset, name, with ``start <= known_at < end``."""
        sql, args = _metric_query(assets, None, start, end)
        async with self._db.execute(sql + " ORDER BY known_at, asset, name", args) as cursor:
            while rows := await cursor.fetchmany(batch):
                for asset, name, observed_at, known_at, value in rows:
                    yield Metric(known_at, asset, name, observed_at, value)

    async def coverage(self) -> list[MetricCoverage]:
        """First and last day and row count of every stored metric."""
        async with self._db.execute(
            "SELECT asset, name, MIN(source), MIN(observed_at), MAX(observed_at), COUNT(*) "
            "FROM metric GROUP BY asset, name ORDER BY asset, name"
        ) as cursor:
            rows = await cursor.fetchall()
        return [MetricCoverage(*row) for row in rows]


def _metric_query(
    assets: Sequence[str] | None,
    names: Sequence[str] | None,
    known_from: int | None,
    known_before: int | None,
) -> tuple[str, list[object]]:
    """The SELECT of :data:`METRIC_COLUMNS` with the filters of ``read_metrics``/``iter_metrics``:
    asset and name lists, and ``known_from <= known_at < known_before``."""
    sql = "SELECT asset, name, observed_at, known_at, value FROM metric WHERE 1=1"
    args: list[object] = []
    for column, values in (("asset", assets), ("name", names)):
        if values is not None:
            sql += f" AND {column} IN ({','.join('?' * len(values))})"
            args.extend(values)
    if known_from is not None:
        sql += " AND known_at >= ?"
        args.append(int(known_from))
    if known_before is not None:
        sql += " AND known_at < ?"
        args.append(int(known_before))
    return sql, args
