"""Candle and daily-metric validation: the first bad row is reported with its line and field."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from bot.feed.validation import (
    DataValidationError,
    validate_candle_rows,
    validate_candles,
    validate_metrics,
)

HOUR = 3_600_000
SOURCE = "data/BTC_USDT-1h.csv"


def candles(rows: int = 5) -> pd.DataFrame:
    """``rows`` good hourly candles from the epoch."""
    return pd.DataFrame(
        {
            "open_time": np.arange(rows, dtype="int64") * HOUR,
            "open": 10.0,
            "high": 12.0,
            "low": 9.0,
            "close": 11.0,
            "volume": 5.0,
        }
    )


def error_of(frame: pd.DataFrame, **options: object) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        validate_candles(frame, SOURCE, **options)  # type: ignore[arg-type]
    return caught.value


def test_good_candles_pass() -> None:
    validate_candles(candles(), SOURCE, timeframe="1h")


def test_message_names_file_line_and_values() -> None:
    frame = candles()
    frame.loc[3, "high"] = 9.0
    frame.loc[3, "close"] = 10.0
    frame.loc[3, "low"] = 8.0
    error = error_of(frame)
    assert str(error) == "data/BTC_USDT-1h.csv line 5: high 9.0 < max(open, close) 10.0"
    assert (error.source, error.line, error.field) == (SOURCE, 5, "high")
    assert error.reason == "high 9.0 < max(open, close) 10.0"


@pytest.mark.parametrize(
    ("row", "column", "value", "field", "words"),
    [
        (2, "high", 8.0, "high", "high 8.0 < low 9.0"),
        (1, "close", np.nan, "close", "close is missing"),
        (4, "open", -1.0, "open", "open -1.0 <= 0"),
        (0, "low", 0.0, "low", "low 0.0 <= 0"),
        (3, "volume", -0.5, "volume", "volume -0.5 < 0"),
        (2, "volume", np.inf, "volume", "volume inf is not finite"),
        (1, "low", 10.5, "low", "low 10.5 > min(open, close) 10.0"),
        (3, "open_time", 3 * HOUR + 0.5, "open_time", "not a whole number"),
    ],
)
def test_bad_value_is_reported_at_its_line(
    row: int, column: str, value: float, field: str, words: str
) -> None:
    frame = candles()
    frame[column] = frame[column].astype("float64")
    frame.loc[row, column] = value
    error = error_of(frame)
    assert error.line == row + 2
    assert error.field == field
    assert words in error.reason


def test_non_numeric_cell_is_reported() -> None:
    frame = candles().astype({"close": object})
    frame.loc[2, "close"] = "11,5"
    error = error_of(frame)
    assert (error.line, error.field) == (4, "close")
    assert "'11,5' is not a number" in error.reason


def test_duplicate_open_time_is_reported_at_the_second_row() -> None:
    frame = candles()
    frame.loc[3, "open_time"] = 2 * HOUR
    error = error_of(frame)
    assert (error.line, error.field) == (5, "open_time")
    assert error.reason.startswith("duplicate open_time 7200000")
    assert "first at line 4" in error.reason


def test_out_of_order_open_time_is_reported() -> None:
    frame = candles().iloc[[0, 2, 1, 3]].reset_index(drop=True)
    error = error_of(frame)
    assert error.line == 4
    assert error.reason.startswith("out of order open_time 3600000")


def test_misaligned_open_time_needs_a_timeframe() -> None:
    frame = candles()
    frame["open_time"] += 60_000
    validate_candles(frame, SOURCE)
    error = error_of(frame, timeframe="1h")
    assert error.line == 2
    assert "not aligned" in error.reason


def test_first_bad_line_wins_over_later_and_other_checks() -> None:
    frame = candles(30_000)
    frame.loc[29_000, "open"] = -1.0
    frame.loc[20_000, "open_time"] = frame.loc[19_999, "open_time"]
    frame.loc[25_000, "high"] = 1.0
    error = error_of(frame)
    assert error.line == 20_002
    assert error.reason.startswith("duplicate")


def test_missing_column_is_reported_on_the_header_line() -> None:
    error = error_of(candles().drop(columns="volume"))
    assert (error.line, error.field) == (1, "volume")
    assert "missing column 'volume'" in error.reason


def test_feed_frame_without_lines_names_the_row_and_time() -> None:
    frame = candles()
    frame.loc[2, "high"] = 8.0
    error = error_of(frame, first_line=None)
    assert error.line is None
    assert str(error).startswith(f"{SOURCE}: row 2: high 8.0 < low 9.0")
    assert "1970-01-01T02:00:00Z" in str(error)


def test_empty_frame_with_columns_passes() -> None:
    validate_candles(candles(0), SOURCE)


def test_error_survives_pickling() -> None:
    error = DataValidationError("f.csv", 3, "close", "close is missing")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.line, copy.field, copy.reason) == ("f.csv", 3, "close", error.reason)
    assert str(copy) == "f.csv line 3: close is missing"
    assert isinstance(copy, ValueError)


def daily(**columns: list[object]) -> pd.DataFrame:
    dates = ["2021-01-01", "2021-01-02", "2021-01-03", "2021-01-04"]
    return pd.DataFrame({"date": dates, **columns})


def metric_error(frame: pd.DataFrame) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        validate_metrics(frame, "BTC_x.csv")
    return caught.value


def test_daily_metrics_allow_missing_values() -> None:
    validate_metrics(daily(a=["1", "", "2.5", " "], b=[1.0, np.nan, 3.0, 4.0]), "BTC_x.csv")


@pytest.mark.parametrize(
    ("frame", "line", "field", "words"),
    [
        (daily(a=["1", "2", "x", "3"]), 4, "a", "'x' is not a number"),
        (daily(a=[1.0, 2.0, 3.0, -np.inf]), 5, "a", "not finite"),
        (daily(a=["1", "2", "inf", "3"]), 4, "a", "not finite"),
    ],
)
def test_bad_metric_value_is_reported(
    frame: pd.DataFrame, line: int, field: str, words: str
) -> None:
    error = metric_error(frame)
    assert (error.line, error.field) == (line, field)
    assert words in error.reason


def test_duplicate_and_out_of_order_dates_are_reported() -> None:
    frame = daily(a=[1, 2, 3, 4])
    frame.loc[2, "date"] = "2021-01-02"
    error = metric_error(frame)
    assert (error.line, error.field) == (4, "date")
    assert error.reason.startswith("duplicate date 2021-01-02")

    frame = daily(a=[1, 2, 3, 4]).iloc[[0, 2, 1, 3]].reset_index(drop=True)
    assert metric_error(frame).reason.startswith("out of order date 2021-01-02")


def test_bad_date_and_missing_date_column_are_reported() -> None:
    frame = daily(a=[1, 2, 3, 4])
    frame.loc[1, "date"] = "2021-13-01"
    error = metric_error(frame)
    assert (error.line, error.field) == (3, "date")

    error = metric_error(frame.drop(columns="date"))
    assert (error.line, error.field) == (1, "date")
    assert "missing column 'date'" in error.reason


def test_weekly_candles_must_open_on_mondays() -> None:
    monday = 4 * 24 * HOUR  # 1970-01-05, the first Monday after the epoch
    weeks = candles(3)
    weeks["open_time"] = monday + np.arange(3) * 7 * 24 * HOUR
    validate_candles(weeks, SOURCE, timeframe="1w")

    weeks["open_time"] -= 4 * 24 * HOUR  # Thursdays: multiples of a week since the epoch
    error = error_of(weeks, timeframe="1w")
    assert (error.line, error.field) == (2, "open_time")
    assert "not aligned to the 1w grid (Mondays 00:00 UTC)" in error.reason


@pytest.mark.parametrize(
    ("row", "column", "value"),
    [
        (2, "high", 8.0),
        (1, "close", np.nan),
        (4, "open", -1.0),
        (0, "low", 0.0),
        (3, "volume", -0.5),
        (2, "volume", np.inf),
        (1, "low", 10.5),
        (3, "open_time", 3 * HOUR + 0.5),
        (3, "open_time", 2 * HOUR),  # a duplicate
        (2, "open_time", 0.5 * HOUR),  # out of order, and off the grid
        (1, "open_time", HOUR + 60_000),  # off the grid
    ],
)
def test_plain_row_validation_reports_what_the_frame_validation_reports(
    row: int, column: str, value: float
) -> None:
    frame = candles()
    frame[column] = frame[column].astype("float64")
    frame.loc[row, column] = value
    expected = error_of(frame, first_line=None, timeframe="1h")
    rows = frame.to_numpy().tolist()
    with pytest.raises(DataValidationError) as caught:
        validate_candle_rows(rows, SOURCE, timeframe="1h")
    got = caught.value
    assert (got.source, got.line, got.field, got.reason) == (
        expected.source,
        expected.line,
        expected.field,
        expected.reason,
    )


def test_plain_row_validation_returns_typed_tuples() -> None:
    rows = [[0, "10", "12", "9", "11", "5"], [HOUR, 10, 12, 9, 11, 0]]
    assert validate_candle_rows(rows, SOURCE, timeframe="1h") == [
        (0, 10.0, 12.0, 9.0, 11.0, 5.0),
        (HOUR, 10.0, 12.0, 9.0, 11.0, 0.0),
    ]
