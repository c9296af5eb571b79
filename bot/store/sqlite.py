"""Opening an aiosqlite database in WAL mode and bringing its schema to the current version.

The schema version lives in ``PRAGMA user_version``; ``migrations[i]`` takes a database from
version ``i`` to ``i + 1``. A database newer than the code is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite


class SchemaError(RuntimeError):
    """The database file's schema is not one this version of the code understands."""


async def open_database(path: str | Path, migrations: Sequence[str]) -> aiosqlite.Connection:
    """Open (creating if needed) ``path`` in WAL mode and apply pending ``migrations``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
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
