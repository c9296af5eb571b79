"""``market.db``: OHLCV candles keyed by exchange, symbol, timeframe and open time.

Writes are idempotent upserts in one transaction per call, so a file either lands whole or not
at all. Reads return pandas frames (training, reports) or ordered ``Bar`` streams (replay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bot.events import Bar
from bot.store.sqlite import SqliteStore
from bot.timeframes import timeframe_ms

CANDLE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]
"""The columns of a candle frame, in order: open time (UTC epoch ms), OHLC prices, volume."""

CANDLE_DTYPES = {"open_time": "int64"} | {name: "float64" for name in CANDLE_COLUMNS[1:]}

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


def candle_frame(data: pd.DataFrame | Iterable[Sequence[Any]]) -> pd.DataFrame:
    """A frame of :data:`CANDLE_COLUMNS` with the store's dtypes (int64 open time, float64 rest).

    ``data`` is a frame holding those columns (others are dropped) or rows
    ``(open_time, open, high, low, close, volume)``; a missing price (``None``) becomes NaN, which
    validation reports.
    """
    if isinstance(data, pd.DataFrame):
        frame = data[CANDLE_COLUMNS]
    else:
        frame = pd.DataFrame([list(row[:6]) for row in data], columns=CANDLE_COLUMNS)
    return frame.astype(CANDLE_DTYPES)


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


class MarketStore(SqliteStore):
    """Async access to ``market.db``. Use ``async with await MarketStore.open(path) as store``."""

    MIGRATIONS = MIGRATIONS

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
        return candle_frame(rows)

    async def missing_ranges(
        self, exchange: str, symbol: str, timeframe: str, start: int, end: int
    ) -> list[tuple[int, int]]:
        """Open-time ranges ``[first, stop)`` of the candles missing from ``[start, end)``.

        ``start`` and ``end`` are open times on the timeframe's grid. The result covers the part
        before the first stored candle, every interior gap and the part after the last stored
        candle, in order; it is ``[(start, end)]`` when nothing is stored there and ``[]`` when
        the range is complete.
        """
        step = timeframe_ms(timeframe)
        if end <= start:
            return []
        key = (exchange, symbol, timeframe, int(start), int(end))
        where = "exchange=? AND symbol=? AND timeframe=? AND open_time >= ? AND open_time < ?"
        async with self._db.execute(
            f"SELECT MIN(open_time), MAX(open_time) FROM ohlcv WHERE {where}", key
        ) as cursor:
            first, last = await cursor.fetchone()  # type: ignore[misc]
        if first is None:
            return [(int(start), int(end))]
        ranges: list[tuple[int, int]] = []
        if first > start:
            ranges.append((int(start), int(first)))
        async with self._db.execute(
            "SELECT previous, open_time FROM (SELECT open_time, "
            "LAG(open_time) OVER (ORDER BY open_time) AS previous "
            f"FROM ohlcv WHERE {where}) WHERE open_time - previous > ? ORDER BY open_time",
            (*key, step),
        ) as cursor:
            ranges += [(int(a) + step, int(b)) for a, b in await cursor.fetchall()]
        if last + step < end:
            ranges.append((int(last) + step, int(end)))
        return ranges

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

    async def exchanges(self) -> list[str]:
        """Exchange names the store holds candles under, sorted."""
        async with self._db.execute("SELECT DISTINCT exchange FROM ohlcv ORDER BY 1") as cursor:
            return [row[0] for row in await cursor.fetchall()]

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
