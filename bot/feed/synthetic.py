"""The embedded synthetic market: the project's default data source, generated from a seed.

The model, from the top:

Market regime
    A Markov chain over days with four states. Mean durations: bull 60 days, bear 45, sideways 40,
    stress 4 (stress is entered rarely, mostly from bear). Each state sets the market's
    annualised log drift (bull +70%, bear -70%, sideways 0, stress -500%) and scales every
    volatility (x1.0, x1.25, x0.7, x2.5). The covid crash days are forced into ``stress``, and a
    regime that the chain never visits gets one block of its mean duration at a random day (only
    for ranges of at least 120 days), so all four appear in any multi-year range.
Hourly log returns (one-factor model)
    ``r_coin = beta * f + m_coin/24 + sigma_idio * e`` per hour, where the market factor
    ``f = mu_regime/24 + sigma_market * e_market`` (55% a year), and both shocks are Student-t with
    4 degrees of freedom scaled to unit variance (fat tails). BTC has beta 1.0 and idiosyncratic
    vol 25% a year, ETH 1.15 and 40%; any other coin draws beta in [1.1, 1.45] and idiosyncratic
    vol in [50%, 85%], so altcoins are more volatile (60-120% a year) and hourly correlations sit
    around 0.4-0.8.
Predictable drift ``alpha``
    Per coin, a daily AR(1) with a 30-day half-life whose stationary spread is 2.5 times the coin's
    annual volatility (about 150% a year annualised for BTC, 200-280% for altcoins). It is the part
    of the coin's expected return that the market regime does not explain; a policy that knew it
    would beat buy & hold by a wide margin. It has to be this strong for the leading metrics to
    stand out from the noise metrics over 12-48 day horizons in a three-year sample.
Leading ("planted") metrics, ``leading_metrics`` per coin
    Metric ``j`` for day ``d`` is the mean of the coin's expected daily return
    ``alpha + beta * mu_regime`` over days ``d+1 .. d+1+L_j`` (``L_j`` spread over 0..20), i.e.
    strictly after the day it describes, standardised, signed (half of them +, half -),
    plus AR(1) noise of 0.3-0.7 standard deviations, then rendered like an on-chain series: a
    positive level ``exp(a + b x)``, an integer count (Poisson), a ratio near a base, or a signed
    rate. The names (``planted``) are drawn from the same pool as the noise metrics'. The luna
    collapse is part of the collapsing coin's expected return here (clipped at 4 standard
    deviations), so its leading metrics see it coming; the covid and flash crashes are not.
Noise metrics, ``noise_metrics`` per coin, and ``market_metrics`` under asset ``MARKET``
    AR(1) processes, random walks, weekly seasonal patterns and noisy trends, independent of
    prices, rendered the same way. Market-wide names start with ``market_``.
    (The metric generation lives in :mod:`bot.feed.synthetic_metrics`.)
Candles
    Hourly, UTC-aligned, ``open`` = previous ``close``; wicks grow with the hour's volatility;
    volume is lognormal, grows with the size of the hour's move and the regime (stress x2.5),
    and is quoted in coin units (quote volume / close).
Scenarios
    See :mod:`bot.feed.scenarios`: covid crash (all coins), luna collapse (the last coin), flash
    crash (the first coin), at their historical dates when they fit in the range.

Determinism: every random stream is a ``numpy`` ``Generator`` seeded from ``(seed, stream)``, where
a coin's streams are keyed by its ticker. So the same arguments give bitwise-identical frames, and
a coin's own drift, parameters and metrics do not change when other coins are added or removed
(only the scenarios that pick the first or last coin do).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bot.feed.scenarios import SCENARIOS, PlacedScenario, apply_scenarios, place_scenarios
from bot.feed.scenarios import stress_hours as scenario_stress_hours
from bot.feed.synthetic_metrics import (
    MARKET_ASSET,
    MAX_LEAD_DAYS,
    ar1,
    coin_metrics,
    daily_rate,
    market_wide_metrics,
)
from bot.store.market import CANDLE_COLUMNS, MarketStore
from bot.store.metrics import MetricStore, daily_known_at
from bot.timeframes import DAY_MS, HOUR_MS
from config.schema import AppConfig

REGIMES = ("bull", "bear", "sideways", "stress")
_MEAN_DAYS = np.array([60.0, 45.0, 40.0, 4.0])
_LEAVE_TO = np.array(  # where a regime goes when it ends (rows: from, columns: to)
    [
        [0.0, 0.25, 0.65, 0.10],
        [0.30, 0.0, 0.50, 0.20],
        [0.47, 0.45, 0.0, 0.08],
        [0.10, 0.60, 0.30, 0.0],
    ]
)
_REGIME_DRIFT = np.array([0.7, -0.7, 0.0, -5.0])  # market, annualised log drift
_REGIME_VOL = np.array([1.0, 1.25, 0.7, 2.5])
_REGIME_VOLUME = np.array([1.2, 1.0, 0.7, 2.5])
_STRESS = REGIMES.index("stress")

_DAYS_PER_YEAR = 365.0
_HOURS_PER_YEAR = 24 * _DAYS_PER_YEAR
_MARKET_VOL = 0.55
_TAIL_DF = 4.0
_ALPHA_HALF_LIFE_DAYS = 30.0
_ALPHA_SHARPE = 2.5

_KNOWN_COINS = {  # ticker: (beta, idiosyncratic vol, first price)
    "BTC": (1.0, 0.25, 7200.0),
    "ETH": (1.15, 0.40, 130.0),
}
_FIRST_PRICES = {"SOL": 1.5, "LINK": 1.8, "STORJ": 0.15, "BNB": 14.0, "ADA": 0.033, "XRP": 0.19}


@dataclass(frozen=True)
class SyntheticMarket:
    """A generated market: candles, daily metrics and the ground truth behind them.

    ``candles``: coin -> hourly frame of ``open_time`` (int64 epoch ms, UTC, hour-aligned),
    ``open``, ``high``, ``low``, ``close``, ``volume`` (float64).
    ``metrics``: long frame ``asset``, ``name``, ``observed_at`` (00:00 UTC of the day described),
    ``value``; one row per asset, name and day; market-wide metrics under ``MARKET``.
    ``planted``: coin -> names of its metrics that lead its future returns.
    ``regimes``: daily ``day`` (epoch ms) and ``regime`` (one of :data:`REGIMES`).
    ``scenario_windows``: scenario -> (start_ms, end_ms, affected coins), bars with
    ``start_ms <= open_time < end_ms``.
    """

    candles: dict[str, pd.DataFrame]
    metrics: pd.DataFrame
    planted: dict[str, tuple[str, ...]]
    regimes: pd.DataFrame
    scenario_windows: dict[str, tuple[int, int, tuple[str, ...]]]


@dataclass(frozen=True)
class WriteSummary:
    """What :func:`write_market` stored."""

    bars: int
    metric_rows: int


def generate_market(
    coins: Sequence[str],
    start_ms: int,
    end_ms: int,
    seed: int,
    *,
    leading_metrics: int = 12,
    noise_metrics: int = 12,
    market_metrics: int = 4,
    scenarios: Sequence[str] = SCENARIOS,
) -> SyntheticMarket:
    """Generate hourly candles for ``coins`` with open times in ``[start_ms, end_ms)``.

    The first bar opens at ``start_ms`` rounded up to the hour. Metrics cover every UTC day that
    holds a bar. Same arguments, same frames (bitwise); see the module docstring for the model.
    """
    coins = list(coins)
    if not coins:
        raise ValueError("coins must list at least one coin")
    if len(set(coins)) != len(coins) or MARKET_ASSET in coins:
        raise ValueError(f"coins must be distinct and not {MARKET_ASSET!r}: {coins}")
    first_open = -(-start_ms // HOUR_MS) * HOUR_MS
    n_hours = -(-(end_ms - first_open) // HOUR_MS)
    if n_hours <= 0:
        raise ValueError(f"empty range: start {start_ms} must be before end {end_ms}")
    open_times = first_open + HOUR_MS * np.arange(n_hours, dtype=np.int64)
    first_day = first_open - first_open % DAY_MS
    hour_day = (open_times - first_day) // DAY_MS
    n_days = int(hour_day[-1]) + 1
    days = first_day + DAY_MS * np.arange(n_days, dtype=np.int64)
    seed = seed % 2**63

    placed = place_scenarios(scenarios, coins, first_open, n_hours)
    stress_days = [
        (int(hour_day[a]), int(hour_day[b - 1]) + 1) for a, b in scenario_stress_hours(placed)
    ]
    regime = _simulate_regimes(n_days + MAX_LEAD_DAYS + 1, n_days, stress_days, _rng(seed, 1))
    market_drift = _REGIME_DRIFT[regime]  # annualised, per day (extended past the range)
    hour_regime = regime[hour_day]
    hour_vol = _REGIME_VOL[hour_regime] / np.sqrt(_HOURS_PER_YEAR)
    factor = market_drift[hour_day] / _HOURS_PER_YEAR + _MARKET_VOL * hour_vol * _t_shocks(
        _rng(seed, 2), n_hours
    )

    candles: dict[str, pd.DataFrame] = {}
    metric_frames: list[pd.DataFrame] = []
    planted: dict[str, tuple[str, ...]] = {}
    for coin in coins:
        key = zlib.crc32(coin.encode())
        beta, idio_vol, first_price = _coin_profile(coin, _rng(seed, key, 0))
        annual_vol = float(np.hypot(beta * _MARKET_VOL, idio_vol))
        price_rng = _rng(seed, key, 1)
        alpha = ar1(price_rng, len(regime), _ALPHA_HALF_LIFE_DAYS, _ALPHA_SHARPE * annual_vol)
        expected = (alpha + beta * market_drift) / _DAYS_PER_YEAR  # daily log return
        log_returns = (
            beta * factor
            + expected[hour_day] / 24
            + idio_vol * hour_vol * _t_shocks(price_rng, n_hours)
        )
        foreseen = apply_scenarios(log_returns, coin, placed, _rng(seed, key, 2))
        candles[coin] = _candles(
            open_times,
            first_price,
            log_returns,
            annual_vol * hour_vol,
            hour_regime,
            _rng(seed, key, 3),
        )
        frame, names = coin_metrics(
            coin,
            days,
            expected,
            daily_rate(foreseen, hour_day, len(expected)),
            leading_metrics,
            noise_metrics,
            _rng(seed, key, 4),
        )
        metric_frames.append(frame)
        planted[coin] = names
    metric_frames.append(market_wide_metrics(days, market_metrics, _rng(seed, 3)))

    return SyntheticMarket(
        candles=candles,
        metrics=pd.concat(metric_frames, ignore_index=True),
        planted=planted,
        regimes=pd.DataFrame(
            {"day": days, "regime": np.asarray(REGIMES, dtype=object)[regime[:n_days]]}
        ).astype({"regime": "str"}),
        scenario_windows=_windows(placed, first_open),
    )


def generate_from_config(cfg: AppConfig) -> SyntheticMarket:
    """The market that ``cfg`` describes: ``cfg.market`` coins from 00:00 UTC of ``start``
    through the whole day ``end`` (inclusive), shaped by ``cfg.synthetic``."""
    synthetic = cfg.synthetic
    return generate_market(
        cfg.market.coins,
        cfg.market.start_ms,
        cfg.market.end_ms,
        synthetic.seed,
        leading_metrics=synthetic.leading_metrics,
        noise_metrics=synthetic.noise_metrics,
        market_metrics=synthetic.market_metrics,
        scenarios=synthetic.scenarios,
    )


async def write_market(
    market: SyntheticMarket,
    market_store: MarketStore,
    metric_store: MetricStore,
    *,
    exchange: str = "synthetic",
    quote: str = "USDT",
    publication_lag_ms: int = 3_600_000,
) -> WriteSummary:
    """Store the candles as ``{coin}/{quote}`` 1h bars and the metrics with source ``synthetic``.

    A daily value becomes known when its day has ended plus ``publication_lag_ms``:
    ``known_at = observed_at + 1 day + publication_lag_ms`` (:func:`daily_known_at`).
    """
    bars = 0
    for coin, frame in market.candles.items():
        bars += await market_store.upsert_frame(exchange, f"{coin}/{quote}", "1h", frame)
    metrics = market.metrics.assign(
        known_at=daily_known_at(market.metrics["observed_at"], publication_lag_ms)
    )
    rows = await metric_store.upsert_frame(metrics, source="synthetic")
    return WriteSummary(bars=bars, metric_rows=rows)


# --- randomness -------------------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def _t_shocks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Student-t shocks scaled to unit variance."""
    return rng.standard_t(_TAIL_DF, n) / np.sqrt(_TAIL_DF / (_TAIL_DF - 2))


# --- prices -----------------------------------------------------------------------------------


def _simulate_regimes(
    n: int, n_visible: int, stress_days: list[tuple[int, int]], rng: np.random.Generator
) -> np.ndarray:
    stay = 1.0 - 1.0 / _MEAN_DAYS
    draws = rng.random(n)
    moves = rng.random(n)
    state = int(rng.choice(3))  # never open in stress
    regime = np.empty(n, dtype=np.int64)
    for day in range(n):
        if draws[day] > stay[state]:
            state = int(np.searchsorted(np.cumsum(_LEAVE_TO[state]), moves[day], side="right"))
        regime[day] = state
    for first, last in stress_days:
        regime[first:last] = _STRESS
    if n_visible >= 120:
        for missing in sorted(set(range(len(REGIMES))) - set(regime[:n_visible].tolist())):
            length = int(_MEAN_DAYS[missing])
            start = int(rng.integers(0, n_visible - length))
            regime[start : start + length] = missing
        for first, last in stress_days:  # a forced block must not hide the crash
            regime[first:last] = _STRESS
    return regime


def _coin_profile(coin: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """(beta, idiosyncratic annual vol, first price) of a coin."""
    beta, idio_vol = rng.uniform(1.1, 1.45), rng.uniform(0.5, 0.85)
    first_price = _FIRST_PRICES.get(coin, float(10 ** rng.uniform(-1.5, 2.0)))
    return _KNOWN_COINS.get(coin, (beta, idio_vol, first_price))


def _candles(
    open_times: np.ndarray,
    first_price: float,
    log_returns: np.ndarray,
    hour_vol: np.ndarray,
    hour_regime: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    n = len(log_returns)
    close = first_price * np.exp(np.cumsum(log_returns))
    open_ = np.r_[first_price, close[:-1]]
    high = np.maximum(open_, close) * np.exp(0.6 * hour_vol * np.abs(rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-0.6 * hour_vol * np.abs(rng.standard_normal(n)))
    base_vol = hour_vol.mean()
    quote_volume = (
        first_price
        * 2e5
        * np.exp(0.3 * rng.standard_normal(n))
        * (0.5 + np.abs(log_returns) / base_vol)
        * _REGIME_VOLUME[hour_regime]
    )
    return pd.DataFrame(
        {
            "open_time": open_times,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": quote_volume / close,
        },
        columns=CANDLE_COLUMNS,
    )


def _windows(
    placed: Sequence[PlacedScenario], first_open: int
) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    return {
        p.name: (first_open + p.start_hour * HOUR_MS, first_open + p.end_hour * HOUR_MS, p.coins)
        for p in placed
    }
