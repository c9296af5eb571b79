"""A small hand-made market for the DRU tests and benchmark: fast, deterministic, and awkward.

Per coin: 6h bars whose expected return follows a slow AR(1) drift; *leading* metrics whose value
for day ``d`` is the mean drift over the next 24 days plus noise (some rendered as positive,
heavy-tailed levels, some as signed rates); *noise* metrics unrelated to prices; a few days
dropped from every metric (gaps); and a different publication lag per metric, so values of one day
become known at different bar closes. Market-wide noise metrics live under asset ``MKT``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bot.timeframes import DAY_MS, HOUR_MS, to_ms

TIMEFRAME_MS = 6 * HOUR_MS
MARKET_ASSET = "MKT"
LAGS_MS = (1 * HOUR_MS, 7 * HOUR_MS, 30 * HOUR_MS, 3 * HOUR_MS)


@dataclass(frozen=True)
class ToyMarket:
    """Bars per coin (``open_time`` + OHLCV), long metrics with ``known_at``, the ground truth."""

    bars: dict[str, pd.DataFrame]
    metrics: pd.DataFrame
    planted: dict[str, tuple[str, ...]]
    start_ms: int
    n_days: int


def toy_market(
    coins: tuple[str, ...] = ("AAA",),
    *,
    n_days: int = 420,
    seed: int = 0,
    leading: int = 4,
    noise: int = 4,
    market: int = 2,
    gap_fraction: float = 0.05,
    start: str = "2021-01-01",
) -> ToyMarket:
    """Generate the toy market (see the module docstring)."""
    start_ms = to_ms(start)
    rng = np.random.default_rng(seed)
    days = start_ms + DAY_MS * np.arange(n_days, dtype="int64")
    bars: dict[str, pd.DataFrame] = {}
    frames: list[pd.DataFrame] = []
    planted: dict[str, tuple[str, ...]] = {}
    for coin in coins:
        drift = _ar1(rng, n_days + 40, 20.0, 0.01)
        bars[coin] = _bars(rng, start_ms, drift[:n_days])
        columns: dict[str, np.ndarray] = {}
        ahead = np.array([drift[d + 1 : d + 25].mean() for d in range(n_days)])
        ahead = (ahead - ahead.mean()) / ahead.std()
        for j in range(leading):
            sign = 1.0 if j % 2 == 0 else -1.0
            x = sign * ahead + _ar1(rng, n_days, 2.0, 0.5)
            columns[f"lead_{j}"] = np.exp(1.0 + 0.8 * x) if j % 3 == 0 else 0.01 * x
        for j in range(noise):
            columns[f"noise_{j}"] = 50.0 + _ar1(rng, n_days, 15.0, 3.0)
        planted[coin] = tuple(f"lead_{j}" for j in range(leading))
        frames.append(_long(rng, coin, days, columns, gap_fraction))
    market_columns = {f"mkt_{j}": _ar1(rng, n_days, 30.0, 1.0) for j in range(market)}
    frames.append(_long(rng, MARKET_ASSET, days, market_columns, gap_fraction))
    metrics = pd.concat(frames, ignore_index=True)
    return ToyMarket(bars, metrics, planted, start_ms, n_days)


def _ar1(rng: np.random.Generator, n: int, half_life: float, spread: float) -> np.ndarray:
    phi = 0.5 ** (1.0 / half_life)
    shocks = rng.standard_normal(n) * spread * np.sqrt(1 - phi**2)
    path = np.empty(n)
    level = rng.standard_normal() * spread
    for i in range(n):
        level = phi * level + shocks[i]
        path[i] = level
    return path


def _bars(rng: np.random.Generator, start_ms: int, daily_drift: np.ndarray) -> pd.DataFrame:
    per_day = DAY_MS // TIMEFRAME_MS
    n = len(daily_drift) * per_day
    returns = np.repeat(daily_drift / per_day, per_day) + 0.01 * rng.standard_normal(n)
    close = 100.0 * np.exp(np.cumsum(returns))
    open_ = np.r_[100.0, close[:-1]]
    return pd.DataFrame(
        {
            "open_time": start_ms + TIMEFRAME_MS * np.arange(n, dtype="int64"),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": 1000.0 + rng.random(n),
        }
    )


def _long(
    rng: np.random.Generator,
    asset: str,
    days: np.ndarray,
    columns: dict[str, np.ndarray],
    gap_fraction: float,
) -> pd.DataFrame:
    parts = []
    for j, (name, values) in enumerate(columns.items()):
        keep = rng.random(len(days)) >= gap_fraction
        parts.append(
            pd.DataFrame(
                {
                    "asset": asset,
                    "name": name,
                    "observed_at": days[keep],
                    "known_at": days[keep] + DAY_MS + LAGS_MS[j % len(LAGS_MS)],
                    "value": values[keep],
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    return frame.astype({"observed_at": "int64", "known_at": "int64", "value": "float64"})
