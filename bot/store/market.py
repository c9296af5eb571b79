"""``market.db``: OHLCV candles keyed by exchange, symbol, timeframe and open time.

Writes are idempotent upserts in one transaction per call, so a file either lands whole or not
at all. Reads return pandas frames (training, reports) or ordered ``Bar`` streams (replay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiosqlite
import pandas as pd

from bot.events import Bar
from bot.store.sqlite import open_database
from bot.timeframes import timeframe_ms

CANDLE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]

MIGRATIONS = [
    """
    CREATE TABLE ohlcv (
        exchange  TEXT    NOT NULL,
        symbol    TEXT    NOT NULL,
        timeframe TEXT    NOT NULL,
        open_time INTEGER NOT NULL,
        open      REAL    NOT NULL,
        high      REAL    NOT NULL,
        low       REAL    NOT NULL,
        close     REAL    NOT NULL,
        volume    REAL    NOT NULL,
        PRIMARY KEY (exchange, symbol, timeframe, open_time)
    ) WITHOUT ROWID;
    """,
]

Candle = tuple[int, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class Coverage:
    """What the store holds for one series. ``gaps``: candles missing between first and last."""

    exchange: str
    symbol: str
    timeframe: str
    first_open_time: int
    last_open_time: int
    rows: int
    gaps: int


class MarketStore:
    """Async access to ``market.db``. Use ``async with await MarketStore.open(path) as store``."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path) -> MarketStore:
        """Open or create the store at ``path`` with the current schema."""
        path = Path(path)
        return cls(await open_database(path, MIGRATIONS), path)

    async def close(self) -> None:
        """Close the connection (pending writes are already committed)."""
        await self._db.close()

    async def __aenter__(self) -> MarketStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def upsert_candles(
        self, exchange: str, symbol: str, timeframe: str, candles: Iterable[Sequence[float]]
    ) -> int:
        """Insert or replace candles ``(open_time, open, high, low, close, volume)``.

        All rows are written in one transaction; returns the number of rows written.
        """
        rows = [
            (
                exchange,
                symbol,
                timeframe,
                int(c[0]),
                float(c[1]),
                float(c[2]),
                float(c[3]),
                float(c[4]),
                float(c[5]),
            )
            for c in candles
        ]
        if not rows:
            return 0
        try:
            await self._db.executemany(
                "INSERT INTO ohlcv VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(exchange, symbol, timeframe, open_time) DO UPDATE SET "
                "open=excluded.open, high=excluded.high, low=excluded.low, "
                "close=excluded.close, volume=excluded.volume",
                rows,
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return len(rows)

    async def upsert_frame(
        self, exchange: str, symbol: str, timeframe: str, frame: pd.DataFrame
    ) -> int:
        """Upsert a frame with the columns of :data:`CANDLE_COLUMNS`."""
        return await self.upsert_candles(
            exchange, symbol, timeframe, frame[CANDLE_COLUMNS].itertuples(index=False, name=None)
        )

    async def last_open_time(self, exchange: str, symbol: str, timeframe: str) -> int | None:
        """Open time of the newest stored candle, or ``None`` when there is none."""
        async with self._db.execute(
            "SELECT MAX(open_time) FROM ohlcv WHERE exchange=? AND symbol=? AND timeframe=?",
            (exchange, symbol, timeframe),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def read_candles(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: int | None = None,
        end: int | None = None,
    ) -> pd.DataFrame:
        """Candles with ``start <= open_time < end`` as a frame of :data:`CANDLE_COLUMNS`.

        ``open_time`` is int64 epoch ms, sorted ascending; prices and volume are float64.
        """
        sql, args = _range_query(
            "SELECT open_time, open, high, low, close, volume FROM ohlcv "
            "WHERE exchange=? AND symbol=? AND timeframe=?",
            [exchange, symbol, timeframe],
            start,
            end,
        )
        async with self._db.execute(sql + " ORDER BY open_time", args) as cursor:
            rows = await cursor.fetchall()
        frame = pd.DataFrame(rows, columns=CANDLE_COLUMNS)
        return frame.astype({"open_time": "int64"} | {c: "float64" for c in CANDLE_COLUMNS[1:]})

    async def iter_bars(
        self,
        exchange: str,
        symbols: Sequence[str],
        timeframe: str,
        start: int | None = None,
        end: int | None = None,
        batch: int = 10_000,
    ) -> AsyncIterator[Bar]:
        """Closed bars of ``symbols`` in publish order: by close time, then by symbol.

        ``start``/``end`` bound the open time (``start <= open_time < end``).
        """
        step = timeframe_ms(timeframe)
        marks = ",".join("?" * len(symbols))
        sql, args = _range_query(
            "SELECT symbol, open_time, open, high, low, close, volume FROM ohlcv "
            f"WHERE exchange=? AND timeframe=? AND symbol IN ({marks})",
            [exchange, timeframe, *symbols],
            start,
            end,
        )
        async with self._db.execute(sql + " ORDER BY open_time, symbol", args) as cursor:
            while rows := await cursor.fetchmany(batch):
                for symbol, open_time, o, h, lo, c, v in rows:
                    yield Bar(
                        open_time + step, exchange, symbol, timeframe, open_time, o, h, lo, c, v
                    )

    async def coverage(self, exchange: str | None = None) -> list[Coverage]:
        """First, last, row count and missing candles of every stored series."""
        sql = (
            "SELECT exchange, symbol, timeframe, MIN(open_time), MAX(open_time), COUNT(*) "
            "FROM ohlcv"
        )
        args: list[object] = []
        if exchange is not None:
            sql += " WHERE exchange=?"
            args.append(exchange)
        async with self._db.execute(
            sql + " GROUP BY exchange, symbol, timeframe ORDER BY exchange, symbol, timeframe", args
        ) as cursor:
            rows = await cursor.fetchall()
        result = []
        for ex, sym, tf, first, last, count in rows:
            expected = (last - first) // timeframe_ms(tf) + 1
            result.append(Coverage(ex, sym, tf, first, last, count, expected - count))
        return result


def _range_query(
    sql: str, args: list[object], start: int | None, end: int | None
) -> tuple[str, list[object]]:
    if start is not None:
        sql += " AND open_time >= ?"
        args.append(int(start))
    if end is not None:
        sql += " AND open_time < ?"
        args.append(int(end))
    return sql, args
