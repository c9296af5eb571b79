"""Read-only views of a daemon's databases for the dashboard.

Each database is opened with SQLite's ``mode=ro`` (the dashboard can never write to the journal
of orders) through aiosqlite, whose queries run in its own thread: the daemon's event loop never
waits on the disk. A database that does not exist yet (no cycle so far, no metrics configured)
reads as empty.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

JSON_COLUMNS = ("target", "orders", "refusals", "inputs", "allowed", "trims", "explanation")
"""Columns of ``decisions`` holding JSON (``explanation`` only where the schema has it)."""


class ReadOnlyDatabase:
    """One SQLite file opened read-only on first use (and again after an error)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None

    async def rows(self, query: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """The rows of ``query`` as dicts ([] when the file or the table does not exist yet)."""
        if not self.path.exists():
            return []
        try:
            db = await self._connect()
            async with db.execute(query, args) as cursor:
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            await self.close()  # a stale connection is reopened at the next request
            raise

    async def _connect(self) -> aiosqlite.Connection:
        if self._db is None:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._db = await aiosqlite.connect(uri, uri=True)
            await self._db.execute("PRAGMA busy_timeout=2000")
        return self._db

    async def close(self) -> None:
        """Close the connection (reopened on the next query)."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


class StateReader:
    """What the dashboard reads from a daemon's ``state.db``, ``market.db`` and ``metrics.db``."""

    def __init__(self, state_db: Path, market_db: Path, metrics_db: Path) -> None:
        self.state = ReadOnlyDatabase(state_db)
        self.market = ReadOnlyDatabase(market_db)
        self.metrics = ReadOnlyDatabase(metrics_db)

    async def close(self) -> None:
        """Close the three connections."""
        for db in (self.state, self.market, self.metrics):
            await db.close()

    async def decisions(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` journalled decisions, oldest first, JSON columns decoded
        (``explanation`` included when the journal has that column)."""
        rows = await self.state.rows(
            "SELECT * FROM decisions ORDER BY ts DESC LIMIT ?", (int(limit),)
        )
        for row in rows:
            for key in JSON_COLUMNS:
                value = row.get(key)
                if isinstance(value, str):
                    with contextlib.suppress(ValueError):  # else shown as the text it is
                        row[key] = json.loads(value)
        return list(reversed(rows))

    async def decisions_key(self) -> tuple[int, int]:
        """``(count, latest ts)`` of the journalled decisions: changes with every new one."""
        rows = await self.state.rows("SELECT COUNT(*) AS n, MAX(ts) AS ts FROM decisions")
        if not rows:
            return (0, 0)
        return (int(rows[0]["n"] or 0), int(rows[0]["ts"] or 0))

    async def equity(self) -> list[tuple[int, float]]:
        """``(ts, equity)`` of every journalled decision, oldest first (the account marked at
        the close, before that close's orders)."""
        rows = await self.state.rows("SELECT ts, equity FROM decisions ORDER BY ts")
        return [(int(r["ts"]), float(r["equity"])) for r in rows]

    async def refusals(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` guardrail refusals, oldest first."""
        rows = await self.state.rows(
            "SELECT ts, rule, asset, wanted, allowed, detail FROM refusals"
            " ORDER BY id DESC LIMIT ?",
            (int(limit),),
        )
        return list(reversed(rows))

    async def closes(
        self, exchange: str, symbol: str, timeframe: str, first_open: int, last_open: int
    ) -> dict[int, float]:
        """Open time -> close of the stored bars of ``symbol`` opening in
        ``[first_open, last_open]``."""
        rows = await self.market.rows(
            "SELECT open_time, close FROM ohlcv WHERE exchange = ? AND symbol = ? AND"
            " timeframe = ? AND open_time >= ? AND open_time <= ? ORDER BY open_time",
            (exchange, symbol, timeframe, int(first_open), int(last_open)),
        )
        return {int(r["open_time"]): float(r["close"]) for r in rows}

    async def last_bar(self, exchange: str, symbol: str, timeframe: str) -> dict[str, Any] | None:
        """The newest stored bar of ``symbol`` (``open_time``, ``close``, ``volume``) or None."""
        rows = await self.market.rows(
            "SELECT open_time, close, volume FROM ohlcv WHERE exchange = ? AND symbol = ? AND"
            " timeframe = ? ORDER BY open_time DESC LIMIT 1",
            (exchange, symbol, timeframe),
        )
        return rows[0] if rows else None

    async def last_metrics(self, assets: tuple[str, ...]) -> list[dict[str, Any]]:
        """The newest value of every metric series of ``assets`` (``asset``, ``name``,
        ``observed_at``, ``known_at``, ``value``), by asset and name."""
        if not assets:
            return []
        marks = ",".join("?" * len(assets))
        # SQLite returns the other columns of the row holding MAX(observed_at).
        return await self.metrics.rows(
            "SELECT asset, name, MAX(observed_at) AS observed_at, known_at, value FROM metric"
            f" WHERE asset IN ({marks}) GROUP BY asset, name ORDER BY asset, name",
            tuple(assets),
        )
