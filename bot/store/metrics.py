"""``metrics.db``: metric values with the time they describe and the time they became known.

``observed_at`` is the start of the period a value describes (00:00 UTC of its day for a daily
value); ``known_at`` is when a live system could first have read it. Replays publish metrics at
``known_at``; training joins them to bars on ``known_at`` too, so neither can see the future.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiosqlite
import pandas as pd

from bot.events import Metric
from bot.store.sqlite import open_database

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

MetricRow = tuple[str, str, int, int, float]


@dataclass(frozen=True, slots=True)
class MetricCoverage:
    """What the store holds for one metric of one asset."""

    asset: str
    name: str
    source: str
    first_observed_at: int
    last_observed_at: int
    rows: int


class MetricStore:
    """Async access to ``metrics.db``. Use ``async with await MetricStore.open(path) as store``."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path) -> MetricStore:
        """Open or create the store at ``path`` with the current schema."""
        path = Path(path)
        return cls(await open_database(path, MIGRATIONS), path)

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    async def __aenter__(self) -> MetricStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

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

    async def last_observed_at(self, asset: str, name: str) -> int | None:
        """``observed_at`` of the newest stored value of one metric, or ``None``."""
        async with self._db.execute(
            "SELECT MAX(observed_at) FROM metric WHERE asset=? AND name=?", (asset, name)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

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
        sql = "SELECT asset, name, observed_at, known_at, value FROM metric WHERE 1=1"
        args: list[object] = []
        if assets is not None:
            sql += f" AND asset IN ({','.join('?' * len(assets))})"
            args.extend(assets)
        if names is not None:
            sql += f" AND name IN ({','.join('?' * len(names))})"
            args.extend(names)
        if known_before is not None:
            sql += " AND known_at < ?"
            args.append(int(known_before))
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
        sql = "SELECT asset, name, observed_at, known_at, value FROM metric WHERE 1=1"
        args: list[object] = []
        if assets is not None:
            sql += f" AND asset IN ({','.join('?' * len(assets))})"
            args.extend(assets)
        if start is not None:
            sql += " AND known_at >= ?"
            args.append(int(start))
        if end is not None:
            sql += " AND known_at < ?"
            args.append(int(end))
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
