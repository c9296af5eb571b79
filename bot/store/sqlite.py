"""Opening an aiosqlite database in WAL mode and bringing its schema to the current version.

The schema version lives in ``PRAGMA user_version``; ``migrations[i]`` takes a database from
version ``i`` to ``i + 1``. A database newer than the code is refused rather than guessed at.

Durability is the caller's choice (``synchronous``): ``NORMAL`` in WAL mode never corrupts the
file but may lose the last transactions on a power cut, which is fine for candles and metrics
that can be fetched again; a journal of orders sent to an exchange needs ``FULL``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

import aiosqlite

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SYNCHRONOUS_LEVELS: tuple[Synchronous, ...] = ("OFF", "NORMAL", "FULL", "EXTRA")


class SchemaError(RuntimeError):
    """The database file's schema is not one this version of the code understands."""


async def open_database(
    path: str | Path,
    migrations: Sequence[str],
    *,
    synchronous: Synchronous = "NORMAL",
) -> aiosqlite.Connection:
    """Open (creating if needed) ``path`` in WAL mode and apply pending ``migrations``.

    ``synchronous`` sets ``PRAGMA synchronous`` on the connection: ``"NORMAL"`` (the default)
    or ``"FULL"`` for data that must survive a power cut once committed.
    """
    level = str(synchronous).upper()
    if level not in SYNCHRONOUS_LEVELS:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {synchronous!r}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={level}")
        await db.execute("PRAGMA busy_timeout=5000")
        async with db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()  # type: ignore[misc]
        if version > len(migrations):
            raise SchemaError(
                f"{path}: schema version {version} is newer than this code "
                f"(knows up to {len(migrations)}); upgrade cryptorlpm"
            )
        for target, script in enumerate(migrations[version:], start=version + 1):
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={target};\nCOMMIT;")
    except BaseException:
        await db.close()
        raise
    return db


class SqliteStore:
    """Base of the stores: one aiosqlite connection opened with the store's migrations.

    A subclass sets ``MIGRATIONS`` (and ``SYNCHRONOUS`` when its writes must survive a power
    cut). Use ``async with await Store.open(path) as store``.
    """

    MIGRATIONS: ClassVar[Sequence[str]] = ()
    SYNCHRONOUS: ClassVar[Synchronous] = "NORMAL"

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        """Open or create the store at ``path`` with the current schema."""
        path = Path(path)
        return cls(await open_database(path, cls.MIGRATIONS, synchronous=cls.SYNCHRONOUS), path)

    async def close(self) -> None:
        """Close the connection (every write is already committed)."""
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
