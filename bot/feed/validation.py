"""Checks that candle and daily-metric frames are sane before anything stores them.

Every check is vectorised (numpy masks over whole columns), so a 20k-row file costs a few
milliseconds. A frame that fails raises :class:`DataValidationError` for the *first* bad row,
naming the source, the line of the file it came from, the field and what is wrong with it.

Row ``i`` of a frame (by position) is taken to be line ``first_line + i`` of its file: the
header is line 1, so the first data row of a CSV is line 2. Frames that do not come from a
file (a REST download, a websocket) pass ``first_line=None``; their errors carry ``line=None``
and name the row's open time instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bot.store.market import CANDLE_COLUMNS
from bot.timeframes import DAY_MS, CandleGrid, ms_to_iso

PRICE_FIELDS = ("open", "high", "low", "close")


class DataValidationError(ValueError):
    """A data file or feed holds something that must not reach a store.

    Attributes:
        source: file path or feed name the data came from.
        line: 1-based line number in the file (header = line 1); ``None`` when not applicable.
        field: the column at fault, or ``None`` when the problem is not one column's.
        reason: what is wrong, in words.
    """

    def __init__(self, source: str, line: int | None, field: str | None, reason: str) -> None:
        self.source = str(source)
        self.line = line
        self.field = field
        self.reason = reason
        where = self.source if line is None else f"{self.source} line {line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[DataValidationError], tuple[object, ...]]:
        # Keeps the error picklable (it may cross a process pool) with all four attributes.
        return (type(self), (self.source, self.line, self.field, self.reason))


@dataclass(frozen=True, slots=True)
class _Check:
    """One row-wise rule: ``mask`` marks the rows that break it, ``describe(i)`` says why."""

    field: str | None
    mask: np.ndarray
    describe: Callable[[int], str]


def validate_candles(
    frame: pd.DataFrame,
    source: str,
    first_line: int | None = 2,
    timeframe: str | None = None,
) -> None:
    """Raise :class:`DataValidationError` for the first bad candle of ``frame``; else return.

    ``frame`` needs the columns ``open_time, open, high, low, close, volume`` (others are
    ignored). A candle is good when every field is a finite number, prices are > 0, volume is
    >= 0, ``high >= max(open, close)``, ``low <= min(open, close)``, ``open_time`` is an integer
    (epoch ms) greater than the previous row's (duplicates and out-of-order rows are reported as
    such) and, when ``timeframe`` is given, on that timeframe's :class:`~bot.timeframes.CandleGrid`
    (UTC-aligned; weekly candles open on Mondays).

    ``first_line`` is the file line of the frame's first row (2 for a CSV with a header), or
    ``None`` for data that does not come from a file.
    """
    _require_columns(frame, CANDLE_COLUMNS, source, first_line)
    if len(frame) == 0:
        return
    columns = {name: _numeric(frame[name]) for name in CANDLE_COLUMNS}
    checks = [
        check
        for name in CANDLE_COLUMNS
        for check in _number_checks(frame[name], columns[name], name, allow_missing=False)
    ]
    open_, high, low, close = (columns[name] for name in PRICE_FIELDS)
    volume, open_time = columns["volume"], columns["open_time"]
    with np.errstate(invalid="ignore"):
        for name in PRICE_FIELDS:
            values = columns[name]
            checks.append(
                _Check(name, values <= 0, lambda i, n=name, v=values: f"{n} {_num(v[i])} <= 0")
            )
        checks += [
            _Check("volume", volume < 0, lambda i: f"volume {_num(volume[i])} < 0"),
            _Check("high", high < low, lambda i: f"high {_num(high[i])} < low {_num(low[i])}"),
            _Check(
                "high",
                high < np.maximum(open_, close),
                lambda i: (
                    f"high {_num(high[i])} < max(open, close) {_num(max(open_[i], close[i]))}"
                ),
            ),
            _Check(
                "low",
                low > np.minimum(open_, close),
                lambda i: f"low {_num(low[i])} > min(open, close) {_num(min(open_[i], close[i]))}",
            ),
            _Check(
                "open_time",
                open_time != np.floor(open_time),
                lambda i: f"open_time {_num(open_time[i])} is not a whole number of milliseconds",
            ),
        ]
        if timeframe is not None:
            grid = CandleGrid(timeframe)
            checks.append(
                _Check(
                    "open_time",
                    np.mod(open_time - grid.origin, grid.step) != 0,
                    lambda i: (
                        f"open_time {_ms_text(open_time[i])} is not aligned to the "
                        f"{grid.describe()}"
                    ),
                )
            )
    checks += _order_checks(open_time, "open_time", first_line, _ms_text)
    _raise_first(checks, source, first_line, open_time)


def validate_metrics(
    frame: pd.DataFrame,
    source: str,
    first_line: int | None = 2,
) -> None:
    """Raise :class:`DataValidationError` for the first bad row of a daily metric frame.

    ``frame`` is a wide daily frame as stored in CSV files: a ``date`` column (``YYYY-MM-DD``
    text, or datetime64) and one column per metric. Dates must be whole UTC days, strictly
    increasing (no duplicates). Metric cells may be missing (NaN, or an empty string in a text
    column) but a present value must be a finite number.
    """
    _require_columns(frame, ("date",), source, first_line)
    if len(frame) == 0:
        return
    days = _date_ms(frame["date"])
    raw = frame["date"]
    checks = [
        _Check("date", np.isnan(days), lambda i: f"date {raw.iloc[i]!r} is not a YYYY-MM-DD day")
    ]
    with np.errstate(invalid="ignore"):
        checks.append(
            _Check(
                "date",
                np.mod(days, DAY_MS) != 0,
                lambda i: f"date {_day_text(days[i])} is not 00:00 UTC of a day",
            )
        )
    checks += _order_checks(days, "date", first_line, _day_text)
    for name in frame.columns:
        if name == "date":
            continue
        checks += _number_checks(frame[name], _numeric(frame[name]), str(name), allow_missing=True)
    _raise_first(checks, source, first_line, None)


def _require_columns(
    frame: pd.DataFrame, names: Sequence[str], source: str, first_line: int | None
) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        header = first_line - 1 if first_line is not None and first_line > 1 else None
        raise DataValidationError(
            source,
            header,
            missing[0],
            f"missing column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})",
        )


def _numeric(column: pd.Series) -> np.ndarray:
    """``column`` as float64; cells that are empty or not numbers become NaN."""
    if pd.api.types.is_bool_dtype(column):
        return np.full(len(column), np.nan)
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _is_blank(column: pd.Series) -> np.ndarray:
    """Cells that hold no value at all: NaN/None, or an empty or all-space string."""
    blank = column.isna().to_numpy()
    if not pd.api.types.is_numeric_dtype(column):
        text = column.astype("string").str.strip()
        blank = blank | (text == "").fillna(True).to_numpy(dtype=bool)
    return blank


def _number_checks(
    raw: pd.Series, values: np.ndarray, field: str, *, allow_missing: bool
) -> list[_Check]:
    """Missing, non-numeric and non-finite cells of one column."""
    blank = _is_blank(raw)
    nan = np.isnan(values)
    checks = [
        _Check(
            field,
            nan & ~blank,
            lambda i: f"{field} {raw.iloc[i]!r} is not a number",
        ),
        _Check(field, np.isinf(values), lambda i: f"{field} {_num(values[i])} is not finite"),
    ]
    if not allow_missing:
        checks.insert(0, _Check(field, blank, lambda i: f"{field} is missing"))
    return checks


def _order_checks(
    times: np.ndarray, field: str, first_line: int | None, show: Callable[[float], str]
) -> list[_Check]:
    """Duplicate and out-of-order keys; each is reported at the later of the two rows."""
    position = pd.Series(np.arange(len(times)))
    series = pd.Series(times)
    duplicate = series.duplicated(keep="first").to_numpy()
    first_seen = position.groupby(series, dropna=False).transform("min").to_numpy()
    previous = np.concatenate(([np.nan], times[:-1]))
    with np.errstate(invalid="ignore"):
        backwards = times < previous

    def duplicate_reason(i: int) -> str:
        return (
            f"duplicate {field} {show(times[i])} (first at {_row_text(first_seen[i], first_line)})"
        )

    def backwards_reason(i: int) -> str:
        return (
            f"out of order {field} {show(times[i])} after {show(previous[i])} "
            f"({_row_text(i - 1, first_line)})"
        )

    return [
        _Check(field, duplicate, duplicate_reason),
        _Check(field, backwards & ~duplicate, backwards_reason),
    ]


def _raise_first(
    checks: list[_Check], source: str, first_line: int | None, open_time: np.ndarray | None
) -> None:
    """Raise for the first row any check marks, with the first check that marks it."""
    bad = np.zeros(len(checks[0].mask), dtype=bool)
    for check in checks:
        bad |= check.mask
    if not bad.any():
        return
    row = int(np.argmax(bad))
    check = next(c for c in checks if c.mask[row])
    reason = check.describe(row)
    if first_line is None:
        reason = f"row {row}: {reason}"
        if open_time is not None and np.isfinite(open_time[row]):
            reason += f" (open_time {_ms_text(open_time[row])})"
    line = None if first_line is None else first_line + row
    raise DataValidationError(source, line, check.field, reason)


def _date_ms(column: pd.Series) -> np.ndarray:
    """``YYYY-MM-DD`` text or datetime64 values as float epoch ms (NaN where unparsable)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = column.dt.tz_convert("UTC") if column.dt.tz is not None else column
    else:
        stamps = pd.to_datetime(
            column.astype("string").str.strip(), format="%Y-%m-%d", errors="coerce"
        )
    ms = stamps.dt.as_unit("ms").astype("int64").to_numpy(dtype="float64")
    ms[stamps.isna().to_numpy()] = np.nan
    return ms


def _ms_text(ms: float) -> str:
    try:
        return f"{int(ms)} [{ms_to_iso(int(ms))}]"
    except (ValueError, OverflowError, OSError):
        return _num(ms)


def _num(value: float) -> str:
    return repr(float(value))


def _day_text(ms: float) -> str:
    return ms_to_iso(int(ms))[:10]


def _row_text(row: int, first_line: int | None) -> str:
    return f"row {row}" if first_line is None else f"line {first_line + row}"


Candle = tuple[int, float, float, float, float, float]
"""A candle as a plain tuple ``(open_time, open, high, low, close, volume)``."""


def candle_problem(row: Sequence[object], grid: CandleGrid | None = None) -> tuple[str, str] | None:
    """``(field, reason)`` for the first thing wrong with one candle row, or ``None``.

    The same rules as :func:`validate_candles` (every field a finite number, prices > 0, volume
    >= 0, high and low around open and close, a whole open time on ``grid``), in plain Python:
    the few candles a live cycle receives are checked without building a frame.
    """
    if len(row) < 6:
        return "open_time", f"expected 6 fields (open_time, o, h, l, c, v), got {len(row)}"
    values = []
    for name, raw in zip(CANDLE_COLUMNS, row, strict=False):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return name, f"{name} is missing"
        if isinstance(raw, bool):
            return name, f"{name} {raw!r} is not a number"
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return name, f"{name} {raw!r} is not a number"
        if math.isnan(value):
            return name, f"{name} is missing"
        if math.isinf(value):
            return name, f"{name} {_num(value)} is not finite"
        values.append(value)
    open_time, open_, high, low, close, volume = values
    for name, value in zip(PRICE_FIELDS, (open_, high, low, close), strict=True):
        if value <= 0:
            return name, f"{name} {_num(value)} <= 0"
    if volume < 0:
        return "volume", f"volume {_num(volume)} < 0"
    if high < low:
        return "high", f"high {_num(high)} < low {_num(low)}"
    if high < max(open_, close):
        return "high", f"high {_num(high)} < max(open, close) {_num(max(open_, close))}"
    if low > min(open_, close):
        return "low", f"low {_num(low)} > min(open, close) {_num(min(open_, close))}"
    if open_time != math.floor(open_time):
        return "open_time", f"open_time {_num(open_time)} is not a whole number of milliseconds"
    if grid is not None and not grid.is_aligned(int(open_time)):
        return "open_time", (
            f"open_time {_ms_text(open_time)} is not aligned to the {grid.describe()}"
        )
    return None


def validate_candle_rows(
    rows: Sequence[Sequence[object]], source: str, timeframe: str | None = None
) -> list[Candle]:
    """``rows`` as checked :data:`Candle` tuples, in plain Python (no frame is built).

    Raises :class:`DataValidationError` for the first bad row with the same field and reason
    :func:`validate_candles` gives a feed (``first_line=None``): a bad field, or an open time
    that repeats or goes back.
    """
    grid = CandleGrid(timeframe) if timeframe is not None else None
    candles: list[Candle] = []
    seen: dict[int, int] = {}
    for i, row in enumerate(rows):
        problem = candle_problem(row, grid)
        if problem is None:
            t = int(float(row[0]))  # type: ignore[arg-type]
            if t in seen:
                problem = (
                    "open_time",
                    (f"duplicate open_time {_ms_text(t)} (first at row {seen[t]})"),
                )
            elif candles and t < candles[-1][0]:
                problem = (
                    "open_time",
                    (
                        f"out of order open_time {_ms_text(t)} after "
                        f"{_ms_text(candles[-1][0])} (row {i - 1})"
                    ),
                )
        if problem is not None:
            field, reason = problem
            reason = f"row {i}: {reason}"
            opened = _as_float(row[0]) if len(row) else math.nan
            if math.isfinite(opened):
                reason += f" (open_time {_ms_text(opened)})"
            raise DataValidationError(source, None, field, reason)
        seen[t] = i
        candles.append(
            (t, float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]))  # type: ignore[arg-type]
        )
    return candles


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
