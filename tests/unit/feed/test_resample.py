"""Resampling candles into UTC-aligned bins, with gaps and incomplete bins made explicit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bot.feed.resample import IncompleteBin, resample_candles, resample_store
from bot.store import MarketStore

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_577_836_800_000  # 2020-01-01 00:00 UTC, a Wednesday
COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]

# One day of hourly candles: 00-05 complete, 06-11 missing 08:00 and 09:00, 12-17 missing
# entirely, 18-23 complete.  (hour, open, high, low, close, volume)
HOURS = [
    (0, 10.0, 12.0, 9.0, 11.0, 1.0),
    (1, 11.0, 13.0, 10.0, 12.0, 2.0),
    (2, 12.0, 15.0, 11.0, 14.0, 3.0),
    (3, 14.0, 14.5, 8.0, 9.0, 4.0),
    (4, 9.0, 10.0, 8.5, 9.5, 5.0),
    (5, 9.5, 11.0, 9.0, 10.5, 6.0),
    (6, 10.5, 11.0, 10.0, 10.8, 1.5),
    (7, 10.8, 12.5, 10.6, 12.0, 2.5),
    (10, 12.2, 12.4, 9.5, 10.0, 3.0),
    (11, 10.0, 10.2, 9.8, 10.1, 0.25),
    (18, 20.0, 21.0, 19.0, 20.5, 10.0),
    (19, 20.5, 22.0, 20.0, 21.0, 10.0),
    (20, 21.0, 21.5, 18.0, 19.0, 10.0),
    (21, 19.0, 19.5, 18.5, 19.2, 10.0),
    (22, 19.2, 23.0, 19.0, 22.0, 10.0),
    (23, 22.0, 22.5, 21.0, 21.5, 10.5),
]

# Worked out by hand from HOURS: first open, max high, min low, last close, summed volume.
BIN_00 = [T0, 10.0, 15.0, 8.0, 10.5, 21.0, 0]
BIN_06 = [T0 + 6 * HOUR, 10.5, 12.5, 9.5, 10.1, 7.25, 2]
BIN_18 = [T0 + 18 * HOUR, 20.0, 23.0, 18.0, 21.5, 60.5, 0]


def hourly() -> pd.DataFrame:
    frame = pd.DataFrame(HOURS, columns=COLUMNS)
    frame["open_time"] = T0 + frame["open_time"] * HOUR
    return frame


def test_six_hour_bins_match_the_hand_computed_values() -> None:
    result = resample_candles(hourly(), "1h", "6h")
    assert list(result.frame.columns) == [*COLUMNS, "missing"]
    assert result.frame.values.tolist() == [BIN_00, BIN_06, BIN_18]
    assert result.frame["open_time"].dtype == "int64"
    assert result.frame["missing"].dtype == "int64"
    # The 12:00 bin had no candle at all: it is a gap, not an incomplete bin.
    assert result.incomplete == (IncompleteBin(T0 + 6 * HOUR, 2),)
    assert result.dropped == 0


def test_partial_drop_leaves_out_incomplete_bins_but_still_reports_them() -> None:
    result = resample_candles(hourly(), "1h", "6h", partial="drop")
    assert result.frame.values.tolist() == [BIN_00, BIN_18]
    assert result.incomplete == (IncompleteBin(T0 + 6 * HOUR, 2),)
    assert result.dropped == 1


def test_bins_are_utc_aligned_whatever_the_first_candle() -> None:
    frame = hourly().iloc[3:].reset_index(drop=True)  # starts at 03:00
    result = resample_candles(frame, "1h", "6h")
    assert result.frame["open_time"].tolist() == [T0, T0 + 6 * HOUR, T0 + 18 * HOUR]
    assert result.frame.iloc[0].tolist() == [T0, 14.0, 14.5, 8.0, 10.5, 15.0, 3]
    assert result.incomplete[0] == IncompleteBin(T0, 3)


def test_daily_bins_sum_the_whole_day() -> None:
    result = resample_candles(hourly(), "1h", "1d")
    assert result.frame.values.tolist() == [[T0, 10.0, 23.0, 8.0, 21.5, 88.75, 8]]


def test_weekly_bins_open_on_monday() -> None:
    days = pd.DataFrame(
        {
            "open_time": T0 + np.arange(10) * DAY,  # Wed 2020-01-01 .. Fri 2020-01-10
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 1.0,
        }
    )
    result = resample_candles(days, "1d", "1w")
    monday = T0 - 2 * DAY
    assert result.frame["open_time"].tolist() == [monday, monday + 7 * DAY]
    assert result.frame["volume"].tolist() == [5.0, 5.0]
    assert result.incomplete == (IncompleteBin(monday, 2), IncompleteBin(monday + 7 * DAY, 2))


def test_same_timeframe_is_an_identity() -> None:
    result = resample_candles(hourly(), "1h", "1h")
    pd.testing.assert_frame_equal(result.frame[COLUMNS], hourly())
    assert result.incomplete == ()


@pytest.mark.parametrize(("source", "target"), [("1h", "90m"), ("4h", "6h"), ("6h", "1h")])
def test_target_must_be_a_whole_multiple_of_the_source(source: str, target: str) -> None:
    with pytest.raises(ValueError, match="not a whole multiple"):
        resample_candles(hourly(), source, target)


def test_unsorted_or_misaligned_input_is_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        resample_candles(hourly().iloc[::-1], "1h", "6h")
    shifted = hourly()
    shifted["open_time"] += 60_000
    with pytest.raises(ValueError, match="not aligned"):
        resample_candles(shifted, "1h", "6h")
    with pytest.raises(ValueError, match="partial"):
        resample_candles(hourly(), "1h", "6h", partial="fill")  # type: ignore[arg-type]


def test_empty_input_gives_an_empty_frame() -> None:
    result = resample_candles(hourly().iloc[:0], "1h", "6h")
    assert result.frame.empty and list(result.frame.columns) == [*COLUMNS, "missing"]
    assert result.incomplete == ()


def test_agrees_with_pandas_resample_on_random_gappy_candles() -> None:
    rng = np.random.default_rng(3)
    hours = np.sort(rng.choice(24 * 40, size=700, replace=False))
    hours = hours[(hours < 300) | (hours >= 320)]  # whole 6h bins without a candle
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(hours))))
    open_ = close * np.exp(rng.normal(0, 0.005, len(hours)))
    frame = pd.DataFrame(
        {
            "open_time": T0 + hours * HOUR,
            "open": open_,
            "high": np.maximum(open_, close) * 1.01,
            "low": np.minimum(open_, close) * 0.99,
            "close": close,
            "volume": rng.uniform(0, 5, len(hours)),
        }
    )
    result = resample_candles(frame, "1h", "6h").frame.set_index("open_time")

    indexed = frame.set_index(pd.to_datetime(frame["open_time"], unit="ms"))
    bins = indexed.resample("6h", origin="epoch")
    expected = pd.DataFrame(
        {
            "open": bins["open"].first(),
            "high": bins["high"].max(),
            "low": bins["low"].min(),
            "close": bins["close"].last(),
            "volume": bins["volume"].sum(),
            "missing": 6 - bins["open"].count(),
        }
    )
    assert (expected["missing"] == 6).sum() >= 2 and expected["missing"].between(1, 5).any()
    expected = expected[expected["missing"] < 6]
    expected.index = expected.index.as_unit("ms").astype("int64")
    assert result.index.tolist() == expected.index.tolist()
    pd.testing.assert_frame_equal(result, expected, check_names=False, check_dtype=False)


async def test_resample_store_writes_the_target_timeframe(market_store: MarketStore) -> None:
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", hourly())
    result = await resample_store(
        market_store,
        exchange="binance",
        symbol="BTC/USDT",
        source_timeframe="1h",
        target_timeframe="6h",
    )
    assert result.incomplete == (IncompleteBin(T0 + 6 * HOUR, 2),)
    stored = await market_store.read_candles("binance", "BTC/USDT", "6h")
    assert stored.values.tolist() == [row[:6] for row in (BIN_00, BIN_06, BIN_18)]
    coverage = {c.timeframe: c for c in await market_store.coverage()}
    assert coverage["6h"].rows == 3 and coverage["6h"].gaps == 1


async def test_resample_store_rebuilds_whole_bins_of_a_range(market_store: MarketStore) -> None:
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", hourly())
    result = await resample_store(
        market_store,
        exchange="binance",
        symbol="BTC/USDT",
        source_timeframe="1h",
        target_timeframe="6h",
        partial="drop",
        start=T0 + 2 * HOUR,  # inside the 00:00 bin: the whole bin is rebuilt
        end=T0 + 7 * HOUR,  # inside the 06:00 bin: rounded up to its end
    )
    assert result.frame.values.tolist() == [BIN_00]
    assert result.dropped == 1
    stored = await market_store.read_candles("binance", "BTC/USDT", "6h")
    assert stored.values.tolist() == [BIN_00[:6]]


def test_a_bin_ending_after_the_source_is_forming_and_left_out() -> None:
    frame = hourly().iloc[:9].reset_index(drop=True)  # 00:00 .. 10:00 with 08, 09 missing
    end = T0 + 11 * HOUR  # the newest source candle (10:00) closes at 11:00

    result = resample_candles(frame, "1h", "6h", source_end_ms=end)

    assert result.frame["open_time"].tolist() == [T0]
    assert result.forming == IncompleteBin(T0 + 6 * HOUR, 3)
    assert result.incomplete == ()  # the forming bin is not an outage
    # The same bin inside the history (the source goes on past it) is a kept partial bin.
    inside = resample_candles(frame, "1h", "6h", source_end_ms=T0 + 24 * HOUR)
    assert inside.frame["open_time"].tolist() == [T0, T0 + 6 * HOUR]
    assert inside.forming is None


async def test_resample_store_never_writes_the_bin_still_forming(
    market_store: MarketStore,
) -> None:
    # Hourly candles up to 19:00: the 18:00 bin still waits for 20:00 .. 23:00.
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", hourly().iloc[:12])
    result = await resample_store(
        market_store,
        exchange="binance",
        symbol="BTC/USDT",
        source_timeframe="1h",
        target_timeframe="6h",
    )
    stored = await market_store.read_candles("binance", "BTC/USDT", "6h")
    assert stored["open_time"].tolist() == [T0, T0 + 6 * HOUR]  # the outage bin is kept
    assert result.incomplete == (IncompleteBin(T0 + 6 * HOUR, 2),)
    assert result.forming == IncompleteBin(T0 + 18 * HOUR, 4)

    # Once its candles arrive, the next run writes it whole.
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", hourly())
    result = await resample_store(
        market_store,
        exchange="binance",
        symbol="BTC/USDT",
        source_timeframe="1h",
        target_timeframe="6h",
    )
    assert result.forming is None
    stored = await market_store.read_candles("binance", "BTC/USDT", "6h")
    assert stored.values.tolist() == [row[:6] for row in (BIN_00, BIN_06, BIN_18)]


async def test_a_range_inside_the_history_keeps_its_last_bin(market_store: MarketStore) -> None:
    await market_store.upsert_frame("binance", "BTC/USDT", "1h", hourly())
    result = await resample_store(
        market_store,
        exchange="binance",
        symbol="BTC/USDT",
        source_timeframe="1h",
        target_timeframe="6h",
        end=T0 + 12 * HOUR,
    )
    assert result.frame["open_time"].tolist() == [T0, T0 + 6 * HOUR]
    assert result.forming is None
