"""Daily metrics of the synthetic market: leading ("planted") and noise series, rendered like
on-chain data.

See :mod:`bot.feed.synthetic` for the model. Here, a coin's *leading* metric ``j`` for day ``d``
is the mean of the coin's expected daily return over days ``d+1 .. d+1+L_j`` (strictly after the
day it describes), standardised, signed, plus AR(1) noise; *noise* metrics are AR(1) processes,
random walks, weekly cycles and noisy trends unrelated to prices. Every series is then rendered
as a positive level, an integer count, a ratio near a base or a signed rate, with names drawn
from one pool so a name never tells a leading metric from a noise one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MARKET_ASSET = "MARKET"
"""Asset under which the market-wide metrics are stored."""

MAX_LEAD_DAYS = 20
"""Longest lead of a leading metric, in days: drifts must be simulated this far past the range."""

_SIGNAL_CLIP = 4.0

_NAME_POOL = {  # kind of series: on-chain-like names (shared by leading and noise metrics)
    "level": (
        "transaction_volume",
        "exchange_inflow",
        "exchange_outflow",
        "exchange_balance",
        "realized_cap",
        "whale_transaction_volume",
        "age_consumed",
        "dormant_circulation",
        "social_volume",
        "open_interest",
    ),
    "count": (
        "active_addresses",
        "new_addresses",
        "whale_tx_count",
        "transaction_count",
        "dev_activity",
        "github_commits",
        "social_mentions",
        "holders_count",
    ),
    "ratio": ("mvrv_ratio", "nvt_ratio", "velocity", "supply_on_exchanges_share"),
    "signed": ("funding_rate", "sentiment_balance", "net_exchange_flow", "mvrv_long_short_diff"),
}
_MARKET_NAMES = (  # name, kind
    ("market_total_volume", "level"),
    ("market_stablecoin_supply", "level"),
    ("market_fear_greed", "ratio"),
    ("market_funding_rate", "signed"),
    ("market_btc_dominance", "ratio"),
    ("market_open_interest", "level"),
)


def ar1(rng: np.random.Generator, n: int, half_life: float, spread: float) -> np.ndarray:
    """AR(1) path with the given half-life (in steps) and stationary standard deviation."""
    phi = 0.5 ** (1.0 / half_life)
    shocks = rng.standard_normal(n) * spread * np.sqrt(1 - phi**2)
    path = np.empty(n)
    level = rng.standard_normal() * spread
    for i in range(n):
        level = phi * level + shocks[i]
        path[i] = level
    return path


def daily_rate(hourly: np.ndarray, hour_day: np.ndarray, n_days: int) -> np.ndarray:
    """Per-day rate (x24 the hourly mean) of an hourly series; later days repeat the last one."""
    seen = np.bincount(hour_day)
    daily = 24 * np.bincount(hour_day, weights=hourly) / seen
    return np.r_[daily, np.full(n_days - len(daily), daily[-1])]


def coin_metrics(
    coin: str,
    days: np.ndarray,
    expected: np.ndarray,
    foreseen: np.ndarray,
    n_leading: int,
    n_noise: int,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """A coin's leading and noise metrics as a long frame, and the leading metrics' names.

    ``expected`` and ``foreseen`` are daily log drifts, reaching past the last day: the model's
    and the part of the scenarios that flows would have shown (scaled like the model's, clipped).
    """
    n_days = len(days)
    named = _draw_names(n_leading + n_noise, rng)
    order = rng.permutation(len(named))
    leading = [named[i] for i in order[:n_leading]]
    noise = [named[i] for i in order[n_leading:]]
    signs = rng.permutation(np.where(np.arange(n_leading) % 2 == 0, 1.0, -1.0))
    leads = rng.permutation(np.round(np.linspace(0, MAX_LEAD_DAYS, max(n_leading, 1))))
    columns: dict[str, np.ndarray] = {}
    for (name, kind), sign, lead in zip(leading, signs, leads, strict=False):
        model = _mean_ahead(expected, n_days, int(lead) + 1)
        shocks = _mean_ahead(foreseen, n_days, int(lead) + 1)
        signal = np.clip((model + shocks - model.mean()) / model.std(), -_SIGNAL_CLIP, _SIGNAL_CLIP)
        noise_level = rng.uniform(0.3, 0.7)
        columns[name] = _render(kind, sign * signal + ar1(rng, n_days, 1.0, noise_level), rng)
    styles = (np.arange(n_noise) + rng.integers(4)) % 4
    for (name, kind), style in zip(noise, styles, strict=True):
        columns[name] = _render(kind, _noise_driver(int(style), n_days, rng), rng)
    return _long(coin, days, columns), tuple(sorted(name for name, _ in leading))


def _mean_ahead(daily: np.ndarray, n_days: int, width: int) -> np.ndarray:
    """For each day ``d < n_days``: mean of ``daily`` over days ``d+1 .. d+width``."""
    cumulative = np.r_[0.0, np.cumsum(daily)]
    first = np.arange(n_days) + 1
    return (cumulative[first + width] - cumulative[first]) / width


def market_wide_metrics(days: np.ndarray, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` market-wide noise metrics (names starting ``market_``) under :data:`MARKET_ASSET`."""
    columns: dict[str, np.ndarray] = {}
    for i in range(n):
        name, kind = _MARKET_NAMES[i % len(_MARKET_NAMES)]
        suffix = i // len(_MARKET_NAMES)
        name = f"{name}_{suffix + 1}" if suffix else name
        columns[name] = _render(kind, _noise_driver(i % 4, len(days), rng), rng)
    return _long(MARKET_ASSET, days, columns)


def _draw_names(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` distinct (name, kind) pairs from the pool, numbered ``_2``, ``_3``... once used up."""
    pool = [(name, kind) for kind, names in _NAME_POOL.items() for name in names]
    shuffled = [pool[i] for i in rng.permutation(len(pool))]
    drawn = []
    for i in range(n):
        name, kind = shuffled[i % len(pool)]
        round_ = i // len(pool)
        drawn.append((f"{name}_{round_ + 1}" if round_ else name, kind))
    return drawn


def _noise_driver(style: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A standardised series unrelated to prices: AR(1), random walk, weekly cycle or trend."""
    t = np.arange(n)
    if style == 0:
        path = ar1(rng, n, rng.uniform(3.0, 40.0), 1.0)
    elif style == 1:
        path = np.cumsum(rng.standard_normal(n))
    elif style == 2:
        phase = rng.uniform(0, 7)
        path = np.sin(2 * np.pi * (t + phase) / 7) + ar1(rng, n, 2.0, rng.uniform(0.3, 1.0))
    else:
        path = rng.uniform(-1, 1) * t / max(n, 1) * 3 + ar1(rng, n, 10.0, 1.0)
    return _standardise(path)


def _standardise(x: np.ndarray) -> np.ndarray:
    spread = x.std()
    return (x - x.mean()) / spread if spread > 0 else x - x.mean()


def _render(kind: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn a standardised driver into a plausible on-chain series of the given kind."""
    if kind == "level":
        return 10 ** rng.uniform(5, 9) * np.exp(rng.uniform(0.2, 0.4) * x)
    if kind == "count":
        return rng.poisson(10 ** rng.uniform(2.5, 5) * np.exp(rng.uniform(0.2, 0.4) * x)).astype(
            np.float64
        )
    if kind == "ratio":
        return rng.uniform(0.8, 2.5) * np.exp(rng.uniform(0.08, 0.2) * x)
    return 10 ** rng.uniform(-4, 0) * (x + rng.uniform(-0.3, 0.3))


def _long(asset: str, days: np.ndarray, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(days)
    names = list(columns)
    return pd.DataFrame(
        {
            "asset": np.full(n * len(names), asset, dtype=object),
            "name": np.repeat(np.asarray(names, dtype=object), n),
            "observed_at": np.tile(days, len(names)),
            "value": np.concatenate([columns[name] for name in names]) if names else [],
        }
    ).astype({"asset": "str", "name": "str", "observed_at": "int64", "value": "float64"})
