"""Importing candle and daily-metric CSV files into the stores.

Two file shapes are understood, those of ``../shared/data``:

* **candles** ``ohlcv/{SYM}_{QUOTE}-{timeframe}.csv``, exactly as ccxt's ``fetch_ohlcv`` returns
  them: ``timestamp,open,high,low,close,volume`` with ``timestamp`` the candle's *open* time in
  UTC epoch ms. Stored under symbol ``SYM/QUOTE`` and the timeframe of the file name.
* **daily metrics** ``onchain/{ASSET}_{source}.csv``: a ``date`` column (``YYYY-MM-DD``, the UTC
  day the value describes) and one column per metric; an empty cell is a missing value.

Metric names are ``{source}.{column in snake_case}``: ``BTC_blockchain_com.csv`` column
``Nr_Addresses`` becomes ``blockchain_com.nr_addresses`` and ``BTC_coinmetrics_community.csv``
column ``CapMVRVCur`` becomes ``coinmetrics_community.cap_mvrv_cur``. The source prefix keeps
names unique when two files carry the same quantity (both Coin Metrics files have
``HashRate``), and tells a reader where a feature came from.

A daily value for day D describes all of D, so it is stored with ``observed_at`` = D 00:00 UTC
and ``known_at`` = D + 1 day + the publication lag (:func:`bot.store.metrics.daily_known_at`): a
replay cannot see it before day D ends. The columns ``asset`` and ``name`` are refused: the
asset comes from the file name, and every other column is a metric.

Candle open times must lie on the file timeframe's :class:`~bot.timeframes.CandleGrid` (weekly
candles open on Mondays, as the exchanges' do).

Every file is read and validated completely before any of it is written, and then written in
one transaction, so a bad file leaves the store as it was; its error names the file, the line
(header = line 1) and the field. Writes are upserts, so importing the same files again changes
nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from bot.feed.validation import DataValidationError, validate_candles, validate_metrics
from bot.store import MarketStore, MetricStore
from bot.store.market import CANDLE_COLUMNS, candle_frame
from bot.store.metrics import daily_known_at

CANDLE_FILE = re.compile(
    r"^(?P<base>[A-Z0-9]+)_(?P<quote>[A-Z0-9]+)-(?P<timeframe>[1-9]\d*[mhdw])$"
)
METRIC_FILE = re.compile(r"^(?P<asset>[A-Z0-9]+)_(?P<source>\w+)$")
METRIC_FRAME_COLUMNS = ["asset", "name", "observed_at", "value"]
RESERVED_METRIC_COLUMNS = ("asset", "name")
"""Column names a metric file may not use: the long frame's own keys."""

# The time column of a candle file: ccxt's name, or the store's own (for files we export).
_TIME_COLUMNS = ("timestamp", "open_time")
_LINE_IN_PARSER_ERROR = re.compile(r"line (\d+)")

Progress = Callable[[int, int], None]
"""``progress(done_files, total_files)``, called after each file is imported (or skipped)."""


@dataclass(frozen=True, slots=True)
class FileImport:
    """What happened to one file: ``rows`` written, or the ``error`` that rejected it."""

    path: Path
    kind: Literal["candles", "metrics"]
    series: str
    rows: int
    error: DataValidationError | None = None


@dataclass(slots=True)
class ImportReport:
    """Outcome of :func:`import_directory`, one :class:`FileImport` per file in import order.

    With ``dry_run`` (:func:`check_directory`) the files were only read and validated: ``rows``
    is what they would write.
    """

    files: list[FileImport] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    missing_coins: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def rows(self) -> int:
        """Rows written over all files."""
        return sum(f.rows for f in self.files)

    @property
    def rejected(self) -> list[FileImport]:
        """Files refused by validation (only with ``on_error="skip"``)."""
        return [f for f in self.files if f.error is not None]


def read_candle_csv(path: str | Path, timeframe: str | None = None) -> pd.DataFrame:
    """Read and validate a ccxt-shaped candle CSV.

    Returns columns ``open_time`` (int64 epoch ms), ``open, high, low, close, volume``
    (float64), in file order. ``timeframe``, when given, also requires open times on that
    timeframe's grid (UTC-aligned; Mondays for weekly candles).
    Raises :class:`DataValidationError` naming the file, line and field for an empty file, a
    missing column, a malformed row, a non-numeric or missing cell, or any failed candle check
    (see :func:`~bot.feed.validation.validate_candles`); a file with a header but no rows is
    refused too.
    """
    source = str(path)
    # Only an empty cell is missing; text such as "NaN" or "N/A" is reported as not a number.
    raw = _read_csv(path, keep_default_na=False, na_values=[""])
    time_column = next((c for c in _TIME_COLUMNS if c in raw.columns), _TIME_COLUMNS[0])
    raw = raw.rename(columns={time_column: "open_time"})
    if "open_time" not in raw.columns:
        raise DataValidationError(
            source,
            1,
            "timestamp",
            f"missing column 'timestamp' (columns: {', '.join(raw.columns)})",
        )
    validate_candles(raw, source, first_line=2, timeframe=timeframe)
    if raw.empty:
        raise DataValidationError(source, 2, None, "no candles (header only)")
    return candle_frame(raw[CANDLE_COLUMNS].apply(pd.to_numeric))


def read_metric_csv(path: str | Path, asset: str) -> pd.DataFrame:
    """Read and validate a daily metric CSV into a long frame.

    Columns: ``asset`` (``asset``), ``name`` (see :func:`metric_name`), ``observed_at`` (int64
    epoch ms of 00:00 UTC of the row's ``date``), ``value`` (float64); sorted by name, then
    observed_at. Empty cells are missing values and yield no row. Raises
    :class:`DataValidationError` for an empty file, a missing ``date`` column, a column named
    ``asset`` or ``name``, two columns with the same normalised name, a bad or repeated date, or a
    non-numeric or infinite cell.
    """
    path = Path(path)
    source = str(path)
    raw = _read_csv(path, dtype=str, keep_default_na=False)
    if "date" not in raw.columns:
        raise DataValidationError(
            source, 1, "date", f"missing column 'date' (columns: {', '.join(raw.columns)})"
        )
    for column in raw.columns:
        if column.lower() in RESERVED_METRIC_COLUMNS:
            raise DataValidationError(
                source,
                1,
                column,
                f"column {column!r} is not allowed: a metric file has a 'date' column and one "
                "numeric column per metric, and its asset comes from the file name",
            )
    if raw.empty:
        raise DataValidationError(source, 2, None, "no rows (header only)")
    validate_metrics(raw, source, first_line=2)
    prefix = metric_source(path, asset)
    columns = [c for c in raw.columns if c != "date"]
    names = [metric_name(prefix, c) for c in columns]
    seen: dict[str, str] = {}
    for column, name in zip(columns, names, strict=True):
        if name.endswith("."):
            raise DataValidationError(source, 1, column, f"column {column!r} has no usable name")
        if name in seen:
            raise DataValidationError(
                source, 1, column, f"columns {seen[name]!r} and {column!r} both become {name!r}"
            )
        seen[name] = column
    days = pd.to_datetime(raw["date"].str.strip(), format="%Y-%m-%d")
    observed_at = days.dt.as_unit("ms").astype("int64").to_numpy()
    values = (
        raw[columns]
        .apply(lambda c: pd.to_numeric(c.str.strip().replace("", np.nan)))
        .to_numpy(dtype="float64", na_value=np.nan)
    )
    # Column-major ravel: all days of the first metric, then the next, so rows come out sorted.
    flat = values.ravel(order="F")
    present = ~np.isnan(flat)
    frame = pd.DataFrame(
        {
            "asset": asset,
            "name": np.repeat(np.array(names, dtype=object), len(raw))[present],
            "observed_at": np.tile(observed_at, len(names))[present],
            "value": flat[present],
        },
        columns=METRIC_FRAME_COLUMNS,
    )
    frame = frame.sort_values(["name", "observed_at"], kind="stable", ignore_index=True)
    return frame.astype({"asset": "str", "name": "str", "observed_at": "int64", "value": "float64"})


def metric_source(path: str | Path, asset: str) -> str:
    """Source part of a metric file's name: ``BTC_blockchain_com.csv`` -> ``blockchain_com``.

    A file whose stem does not start with ``{asset}_`` keeps its whole stem, snake-cased.
    """
    stem = Path(path).stem
    if stem.startswith(f"{asset}_"):
        stem = stem[len(asset) + 1 :]
    return _snake_case(stem)


def metric_name(source: str, column: str) -> str:
    """Stored metric name of a CSV column: ``metric_name("coinmetrics_siap", "FlowInExUSD")``
    is ``"coinmetrics_siap.flow_in_ex_usd"``."""
    return f"{source}.{_snake_case(column)}"


async def import_candle_file(
    path: str | Path,
    market_store: MarketStore,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
) -> int:
    """Validate one candle CSV completely, then upsert it in one transaction.

    Returns the number of candles written. A :class:`DataValidationError` leaves the store
    unchanged.
    """
    frame = await asyncio.to_thread(read_candle_csv, path, timeframe)
    return await market_store.upsert_frame(exchange, symbol, timeframe, frame)


async def import_metric_file(
    path: str | Path,
    metric_store: MetricStore,
    *,
    asset: str,
    publication_lag_ms: int,
) -> int:
    """Validate one daily metric CSV completely, then upsert it in one transaction.

    Values are stored with ``known_at`` from :func:`daily_known_at` and ``source`` = the file
    stem. Returns the number of values written; a :class:`DataValidationError` leaves the store
    unchanged.
    """
    frame = await asyncio.to_thread(read_metric_csv, path, asset)
    frame["known_at"] = daily_known_at(frame["observed_at"], publication_lag_ms)
    return await metric_store.upsert_frame(frame, source=Path(path).stem)


async def import_directory(
    root: str | Path,
    market_store: MarketStore,
    metric_store: MetricStore,
    *,
    exchange: str = "binance",
    quote: str = "USDT",
    publication_lag_ms: int,
    coins: Sequence[str] | None = None,
    progress: Progress | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> ImportReport:
    """Import a folder laid out like ``../shared/data``: ``ohlcv/`` then ``onchain/``.

    Candle files ``ohlcv/{SYM}_{quote}-{tf}.csv`` go to ``market_store`` under ``exchange``,
    symbol ``SYM/{quote}`` and timeframe ``tf``; with ``coins`` only those coins' files are read
    (``missing_coins`` lists the coins without a file). Metric files ``onchain/{ASSET}_{src}.csv``
    all go to ``metric_store``, whatever ``coins`` says: another asset's metrics (Bitcoin's
    network data) are market-wide candidates for every coin. Other files are listed in
    ``skipped``. Files are imported in sorted order (candles, then metrics), one at a time, each
    validated whole and then written in its own transaction; ``progress(done, total)`` is called
    after each file.

    On a bad file, with ``on_error="raise"`` (the default) the import stops with its
    :class:`DataValidationError`: the files before it (in the order above) are committed, the
    bad file wrote nothing and later files are not read. Fix it and run again; the
    import is idempotent. With ``on_error="skip"`` the error is recorded in the report
    (``rejected``) and the import goes on.
    """

    async def write(item: _PlannedFile) -> int:
        if item.timeframe is not None:
            return await import_candle_file(
                item.path,
                market_store,
                exchange=exchange,
                symbol=item.subject,
                timeframe=item.timeframe,
            )
        return await import_metric_file(
            item.path, metric_store, asset=item.subject, publication_lag_ms=publication_lag_ms
        )

    return await _run_plan(root, quote, coins, write, progress, on_error, dry_run=False)


async def check_directory(
    root: str | Path,
    *,
    quote: str = "USDT",
    coins: Sequence[str] | None = None,
    progress: Progress | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> ImportReport:
    """Read and validate every file :func:`import_directory` would import, writing nothing.

    The report (``dry_run`` set) gives the rows each file would write; errors are raised or
    recorded exactly as the import would.
    """

    async def read(item: _PlannedFile) -> int:
        if item.timeframe is not None:
            return len(await asyncio.to_thread(read_candle_csv, item.path, item.timeframe))
        return len(await asyncio.to_thread(read_metric_csv, item.path, item.subject))

    return await _run_plan(root, quote, coins, read, progress, on_error, dry_run=True)


async def _run_plan(
    root: str | Path,
    quote: str,
    coins: Sequence[str] | None,
    action: Callable[[_PlannedFile], Awaitable[int]],
    progress: Progress | None,
    on_error: Literal["raise", "skip"],
    *,
    dry_run: bool,
) -> ImportReport:
    """Find the files of ``root``, then ``action`` each one in order, into a report."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    check_data_files(root, quote, coins)
    started = time.perf_counter()
    report = ImportReport(dry_run=dry_run)
    plan: list[_PlannedFile] = []

    found: set[str] = set()
    for path in sorted((root / "ohlcv").glob("*.csv")):
        match = CANDLE_FILE.match(path.stem)
        if match is None or match["quote"] != quote:
            report.skipped.append(path)
            continue
        if coins is not None and match["base"] not in coins:
            continue
        found.add(match["base"])
        symbol = f"{match['base']}/{quote}"
        plan.append(_PlannedFile(path, "candles", symbol, match["timeframe"]))
    report.missing_coins = [c for c in coins or () if c not in found]

    for path in sorted((root / "onchain").glob("*.csv")):
        match = METRIC_FILE.match(path.stem)
        if match is None:
            report.skipped.append(path)
            continue
        plan.append(_PlannedFile(path, "metrics", match["asset"], None))

    for done, item in enumerate(plan, start=1):
        if item.timeframe is not None:
            series = f"{item.subject} {item.timeframe}"
        else:
            series = f"{item.subject} {metric_source(item.path, item.subject)}"
        try:
            rows = await action(item)
        except DataValidationError as error:
            if on_error == "raise":
                raise
            outcome = FileImport(item.path, item.kind, series, 0, error)
        else:
            outcome = FileImport(item.path, item.kind, series, rows)
        report.files.append(outcome)
        if progress is not None:
            progress(done, len(plan))
    report.seconds = time.perf_counter() - started
    return report


class NoDataFilesError(FileNotFoundError):
    """A folder to import holds no file in a shape this module understands."""


def check_data_files(
    root: str | Path, quote: str = "USDT", coins: Sequence[str] | None = None
) -> None:
    """Raise :class:`NoDataFilesError` (naming the expected layout and any file whose name was
    not understood) unless ``root`` holds a candle file (of ``coins``, when given) or a metric
    file; reads no file."""
    root = Path(root)
    candles = [
        path
        for path in sorted((root / "ohlcv").glob("*.csv"))
        if (match := CANDLE_FILE.match(path.stem)) is not None
        and match["quote"] == quote
        and (coins is None or match["base"] in coins)
    ]
    metrics = [p for p in (root / "onchain").glob("*.csv") if METRIC_FILE.match(p.stem)]
    if candles or metrics:
        return
    others = sorted(p for p in root.rglob("*") if p.is_file())
    seen = f"; found {len(others)} other file(s), e.g. {others[0]}" if others else " (it is empty)"
    wanted = f" for {', '.join(coins)}" if coins else ""
    raise NoDataFilesError(
        f"{root}: no data files{wanted} to import; expected ohlcv/<COIN>_{quote}-<timeframe>.csv "
        f"(e.g. ohlcv/BTC_{quote}-1h.csv) and onchain/<ASSET>_<source>.csv{seen}"
    )


@dataclass(frozen=True, slots=True)
class _PlannedFile:
    """A file :func:`import_directory` will import: ``subject`` is a symbol or an asset."""

    path: Path
    kind: Literal["candles", "metrics"]
    subject: str
    timeframe: str | None


def _read_csv(path: str | Path, **options: object) -> pd.DataFrame:
    """``pd.read_csv`` with one frame row per file line, parse errors as DataValidationError.

    Blank lines are kept as empty rows (so row ``i`` stays line ``i + 2`` and a blank line is
    reported where it is), except trailing ones, which are dropped.
    """
    source = str(path)
    try:
        frame = pd.read_csv(path, skip_blank_lines=False, **options)  # type: ignore[call-overload]
    except pd.errors.EmptyDataError:
        raise DataValidationError(source, 1, None, "empty file (no header)") from None
    except pd.errors.ParserError as error:
        match = _LINE_IN_PARSER_ERROR.search(str(error))
        line = int(match.group(1)) if match else None
        raise DataValidationError(source, line, None, f"malformed row: {error}") from None
    except UnicodeDecodeError as error:
        raise DataValidationError(source, None, None, f"not UTF-8 text: {error}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    end = len(frame)
    while end > 0 and all(pd.isna(v) or str(v).strip() == "" for v in frame.iloc[end - 1]):
        end -= 1
    return frame.iloc[:end] if end < len(frame) else frame


def _snake_case(text: str) -> str:
    """``CapMVRVCur`` -> ``cap_mvrv_cur``, ``USD_OnChain_Volume`` -> ``usd_on_chain_volume``."""
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text.strip())
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
