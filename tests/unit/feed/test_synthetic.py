"""The synthetic market: determinism, valid candles, regimes, scenarios, planted metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bot.feed.synthetic import (
    MARKET_ASSET,
    REGIMES,
    SyntheticMarket,
    WriteSummary,
    generate_from_config,
    generate_market,
    write_market,
)
from bot.store import MarketStore, MetricStore
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from config.schema import AppConfig, MarketConfig, SyntheticConfig

COINS = ("BTC", "ETH", "SOL", "LINK", "STORJ")
START = to_ms("2020-01-01")
END = to_ms("2022-12-31")
HORIZONS = (12, 24, 48)


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    """The default demo market: five coins, three years, seed 7."""
    return generate_market(COINS, START, END, seed=7)


def _daily_close(candles: pd.DataFrame) -> pd.Series:
    day = candles["open_time"] - candles["open_time"] % DAY_MS
    return candles.groupby(day)["close"].last()


def _forward_correlations(market: SyntheticMarket, coin: str) -> pd.DataFrame:
    """Pearson correlation of each of the coin's metrics (by day) with its forward returns."""
    close = _daily_close(market.candles[coin])
    mine = market.metrics[market.metrics["asset"] == coin]
    wide = mine.pivot(index="observed_at", columns="name", values="value").reindex(close.index)
    return pd.DataFrame({h: wide.corrwith(close.shift(-h) / close - 1) for h in HORIZONS})


def _top_by_frequency(
    correlations: pd.DataFrame, per_horizon: int = 5, keep: int = 10
) -> list[str]:
    """The DRU's pick: top and bottom ``per_horizon`` per horizon, ranked by how often they show."""
    counts: dict[str, int] = {}
    for horizon in correlations.columns:
        ranked = correlations[horizon].sort_values()
        for name in [*ranked.index[:per_horizon], *ranked.index[-per_horizon:]]:
            counts[name] = counts.get(name, 0) + 1
    strength = correlations.abs().mean(axis=1)
    return sorted(counts, key=lambda name: (-counts[name], -strength[name]))[:keep]


def _window(candles: pd.DataFrame, window: tuple[int, int, tuple[str, ...]]) -> pd.DataFrame:
    start, end, _ = window
    return candles[(candles["open_time"] >= start) & (candles["open_time"] < end)]


def _close_before(candles: pd.DataFrame, ms: int) -> float:
    return float(candles.loc[candles["open_time"] < ms, "close"].iloc[-1])


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_bitwise_identical_market(market: SyntheticMarket) -> None:
    again = generate_market(COINS, START, END, seed=7)
    for coin in COINS:
        pd.testing.assert_frame_equal(again.candles[coin], market.candles[coin], check_exact=True)
    pd.testing.assert_frame_equal(again.metrics, market.metrics, check_exact=True)
    pd.testing.assert_frame_equal(again.regimes, market.regimes, check_exact=True)
    assert again.planted == market.planted
    assert again.scenario_windows == market.scenario_windows


def test_different_seed_gives_different_prices_and_metrics(market: SyntheticMarket) -> None:
    other = generate_market(COINS, START, END, seed=8)
    for coin in COINS:
        assert not np.array_equal(other.candles[coin]["close"], market.candles[coin]["close"])
    assert not np.array_equal(other.metrics["value"], market.metrics["value"])


def test_a_coin_does_not_change_when_its_neighbours_do() -> None:
    first = generate_market(("BTC", "ETH", "SOL"), START, END, seed=3)
    second = generate_market(("BTC", "LINK", "SOL"), START, END, seed=3)
    for coin in ("BTC", "SOL"):  # first and last keep their scenarios
        pd.testing.assert_frame_equal(first.candles[coin], second.candles[coin], check_exact=True)
    assert first.planted["SOL"] == second.planted["SOL"]


# --- candles ----------------------------------------------------------------------------------


def test_candles_are_valid_ohlc_hourly_and_continuous(market: SyntheticMarket) -> None:
    for candles in market.candles.values():
        assert list(candles.columns) == ["open_time", "open", "high", "low", "close", "volume"]
        assert candles["open_time"].dtype == np.int64
        assert all(candles[c].dtype == np.float64 for c in candles.columns[1:])
        assert candles["open_time"].iloc[0] == START
        assert candles["open_time"].iloc[-1] == END - HOUR_MS
        assert (np.diff(candles["open_time"]) == HOUR_MS).all()
        assert (candles["open_time"] % HOUR_MS == 0).all()
        prices = candles[["open", "high", "low", "close"]]
        assert np.isfinite(prices.to_numpy()).all() and (prices > 0).all().all()
        assert (candles["high"] >= prices[["open", "close"]].max(axis=1)).all()
        assert (candles["low"] <= prices[["open", "close"]].min(axis=1)).all()
        assert (candles["open"].to_numpy()[1:] == candles["close"].to_numpy()[:-1]).all()
        assert (candles["volume"] > 0).all()


def test_unaligned_start_rounds_up_to_the_next_hour() -> None:
    start = to_ms("2021-06-01T10:30")
    market = generate_market(("BTC",), start, to_ms("2021-06-03"), seed=1, scenarios=())
    open_times = market.candles["BTC"]["open_time"]
    assert open_times.iloc[0] == to_ms("2021-06-01T11:00")
    assert open_times.iloc[-1] == to_ms("2021-06-02T23:00")
    assert sorted(market.metrics["observed_at"].unique()) == [
        to_ms("2021-06-01"),
        to_ms("2021-06-02"),
    ]


def test_coins_are_positively_correlated_and_altcoins_more_volatile(
    market: SyntheticMarket,
) -> None:
    returns = pd.DataFrame({c: np.log(market.candles[c]["close"]).diff() for c in COINS})
    pairs = returns.corr().to_numpy()[np.triu_indices(len(COINS), 1)]
    assert pairs.min() > 0.3 and pairs.max() < 0.9
    annual_vol = returns.std() * np.sqrt(365 * 24)
    assert annual_vol.between(0.5, 1.3).all()
    assert (annual_vol.drop("BTC") > annual_vol["BTC"]).all()


def test_volume_is_higher_in_stress_than_in_calm_markets(market: SyntheticMarket) -> None:
    candles = market.candles["BTC"]
    day = candles["open_time"] - candles["open_time"] % DAY_MS
    regime = day.map(market.regimes.set_index("day")["regime"])
    quote_volume = candles["volume"] * candles["close"]
    by_regime = quote_volume.groupby(regime).median()
    assert by_regime["stress"] > 1.5 * by_regime["sideways"]


# --- regimes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 1, 2, 3])
def test_every_regime_appears_over_three_years(seed: int) -> None:
    market = generate_market(("BTC",), START, END, seed=seed, leading_metrics=0, noise_metrics=0)
    assert set(market.regimes["regime"]) == set(REGIMES)


def test_regimes_are_persistent_and_stress_is_rare_and_short(market: SyntheticMarket) -> None:
    regimes = market.regimes
    assert (np.diff(regimes["day"]) == DAY_MS).all()
    assert len(regimes) == (END - START) // DAY_MS
    spell = (regimes["regime"] != regimes["regime"].shift()).cumsum()
    spells = regimes.groupby(spell)["regime"].agg(["first", "size"])
    mean_days = spells.groupby("first")["size"].mean()
    assert (mean_days.drop("stress") >= 14).all()
    assert mean_days["stress"] <= 10
    assert (regimes["regime"] == "stress").mean() < 0.05


# --- scenarios --------------------------------------------------------------------------------


def test_scenarios_sit_at_their_historical_dates_inside_the_range(
    market: SyntheticMarket,
) -> None:
    windows = market.scenario_windows
    assert windows["covid_crash"] == (to_ms("2020-03-12"), to_ms("2020-04-11"), COINS)
    assert windows["luna_collapse"] == (to_ms("2022-05-08"), to_ms("2022-05-15"), ("STORJ",))
    assert windows["flash_crash"] == (
        to_ms("2021-05-19T13:00"),
        to_ms("2021-05-19T19:00"),
        ("BTC",),
    )


def test_scenarios_outside_history_fall_at_fixed_fractions_of_the_range() -> None:
    start, end = to_ms("2017-01-01"), to_ms("2018-01-01")
    market = generate_market(("BTC", "ETH"), start, end, seed=1)
    expected = {"covid_crash": 0.2, "flash_crash": 0.5, "luna_collapse": 0.75}
    for name, fraction in expected.items():
        window_start, window_end, _ = market.scenario_windows[name]
        assert abs(window_start - (start + fraction * (end - start))) <= DAY_MS
        assert start < window_start < window_end <= end


def test_scenario_that_does_not_fit_the_range_is_left_out() -> None:
    market = generate_market(("BTC", "ETH"), to_ms("2021-01-01"), to_ms("2021-01-11"), seed=1)
    assert set(market.scenario_windows) == {"luna_collapse", "flash_crash"}
    none = generate_market(("BTC",), START, END, seed=1, scenarios=())
    assert none.scenario_windows == {}


def test_covid_crash_takes_every_coin_down_at_least_35_percent(market: SyntheticMarket) -> None:
    window = market.scenario_windows["covid_crash"]
    for coin in window[2]:
        inside = _window(market.candles[coin], window)
        peak = np.maximum.accumulate(inside["high"].to_numpy())
        drawdown = 1 - (inside["low"].to_numpy() / peak).min()
        assert drawdown >= 0.35, coin
    crash_days = market.regimes[market.regimes["day"].between(window[0], window[0] + DAY_MS)]
    assert (crash_days["regime"] == "stress").all()


def test_luna_collapse_wipes_out_the_last_coin_and_it_stays_down(market: SyntheticMarket) -> None:
    window = market.scenario_windows["luna_collapse"]
    (coin,) = window[2]
    candles = market.candles[coin]
    before = _close_before(candles, window[0])
    inside = _window(candles, window)
    after = candles[candles["open_time"] >= window[1]]
    assert inside["close"].iloc[-1] <= 0.05 * before
    assert after["high"].max() < 0.05 * before
    assert (after["low"] > 0).all()


@pytest.mark.parametrize("seed", [7, 1, 2])
def test_flash_crash_drops_within_an_hour_and_recovers_inside_the_window(seed: int) -> None:
    market = generate_market(COINS[:2], START, END, seed=seed, scenarios=("flash_crash",))
    window = market.scenario_windows["flash_crash"]
    (coin,) = window[2]
    candles = market.candles[coin]
    before = _close_before(candles, window[0])
    closes = _window(candles, window)["close"].to_numpy()
    hourly = closes / np.r_[before, closes[:-1]]
    assert hourly.min() <= 0.75
    assert abs(closes[-1] / before - 1) <= 0.05


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_have_one_row_per_asset_name_and_day(market: SyntheticMarket) -> None:
    metrics = market.metrics
    assert list(metrics.columns) == ["asset", "name", "observed_at", "value"]
    assert metrics["observed_at"].dtype == np.int64 and metrics["value"].dtype == np.float64
    assert not metrics.duplicated(["asset", "name", "observed_at"]).any()
    assert np.isfinite(metrics["value"]).all()
    days = market.regimes["day"].to_numpy()
    names = metrics.groupby("asset")["name"].unique()
    assert set(names.index) == {*COINS, MARKET_ASSET}
    for coin in COINS:
        assert len(names[coin]) == 24
        assert set(market.planted[coin]) <= set(names[coin]) and len(market.planted[coin]) == 12
    assert len(names[MARKET_ASSET]) == 4
    assert all(name.startswith("market_") for name in names[MARKET_ASSET])
    per_series = metrics.groupby(["asset", "name"])["observed_at"]
    assert (per_series.size() == len(days)).all() and (per_series.min() == days[0]).all()


def test_metric_names_do_not_reveal_which_are_planted(market: SyntheticMarket) -> None:
    for name in market.metrics["name"].unique():
        assert not any(word in name for word in ("lead", "noise", "plant", "signal"))


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_planted_metrics_lead_forward_returns_far_more_than_noise(seed: int) -> None:
    market = generate_market(COINS, START, END, seed=seed)
    planted_corr, noise_corr = [], []
    for coin in COINS:
        correlations = _forward_correlations(market, coin)
        planted = list(market.planted[coin])
        planted_corr.append(correlations.loc[planted].abs().to_numpy().ravel())
        noise_corr.append(correlations.drop(index=planted).abs().to_numpy().ravel())
        chosen = _top_by_frequency(correlations)
        assert np.mean([name in planted for name in chosen]) >= 0.8, coin
    planted_abs, noise_abs = np.concatenate(planted_corr), np.concatenate(noise_corr)
    assert planted_abs.mean() >= 3 * noise_abs.mean()
    assert (planted_abs > 0.2).mean() >= 0.75


def test_metric_counts_follow_the_arguments() -> None:
    market = generate_market(
        ("BTC", "ETH"),
        to_ms("2021-01-01"),
        to_ms("2021-03-01"),
        seed=2,
        leading_metrics=3,
        noise_metrics=40,
        market_metrics=7,
    )
    names = market.metrics.groupby("asset")["name"].nunique()
    assert names.to_dict() == {"BTC": 43, "ETH": 43, MARKET_ASSET: 7}
    assert all(len(planted) == 3 for planted in market.planted.values())


# --- construction and storage -----------------------------------------------------------------


def test_generate_from_config_uses_market_and_synthetic_sections() -> None:
    cfg = AppConfig(
        market=MarketConfig(coins=("BTC", "SOL"), start="2021-01-01", end="2021-02-01"),
        synthetic=SyntheticConfig(seed=5, leading_metrics=2, noise_metrics=3, market_metrics=1),
    )
    built = generate_from_config(cfg)
    direct = generate_market(
        ("BTC", "SOL"),
        to_ms("2021-01-01"),
        to_ms("2021-02-02"),  # end is inclusive: the whole of 2021-02-01
        seed=5,
        leading_metrics=2,
        noise_metrics=3,
        market_metrics=1,
    )
    pd.testing.assert_frame_equal(built.candles["SOL"], direct.candles["SOL"], check_exact=True)
    pd.testing.assert_frame_equal(built.metrics, direct.metrics, check_exact=True)


@pytest.mark.parametrize(
    ("coins", "start", "end", "scenarios"),
    [
        ((), START, END, ()),
        (("BTC", "BTC"), START, END, ()),
        (("BTC", MARKET_ASSET), START, END, ()),
        (("BTC",), END, START, ()),
        (("BTC",), START, END, ("moon_landing",)),
    ],
)
def test_generate_market_rejects_bad_arguments(
    coins: tuple[str, ...], start: int, end: int, scenarios: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        generate_market(coins, start, end, seed=1, scenarios=scenarios)


async def test_write_market_round_trips_through_the_stores(
    market_store: MarketStore, metric_store: MetricStore
) -> None:
    market = generate_market(
        ("BTC", "ETH"), to_ms("2021-03-01"), to_ms("2021-03-11"), seed=4, market_metrics=2
    )
    lag = 2 * HOUR_MS
    summary = await write_market(
        market, market_store, metric_store, exchange="synth", quote="USDC", publication_lag_ms=lag
    )
    assert summary == WriteSummary(bars=2 * 240, metric_rows=len(market.metrics))
    for coin in ("BTC", "ETH"):
        stored = await market_store.read_candles("synth", f"{coin}/USDC", "1h")
        pd.testing.assert_frame_equal(stored, market.candles[coin], check_exact=True)
    assert all(c.gaps == 0 for c in await market_store.coverage())
    stored = await metric_store.read_metrics()
    assert (stored["known_at"] == stored["observed_at"] + DAY_MS + lag).all()
    expected = market.metrics.sort_values(["asset", "name", "observed_at"], ignore_index=True)
    pd.testing.assert_frame_equal(stored.drop(columns="known_at"), expected, check_exact=True)
    assert {c.source for c in await metric_store.coverage()} == {"synthetic"}
