"""Regime features: what the controller and the manager know about the market at a bar close.

Per coin, from its closes up to and including bar ``t`` only (a window of the last
``lookback_days``):

* ``volatility``: standard deviation of the bar log returns of the last 7 days, annualised;
* ``drawdown``: how far the close is below the highest close of the window (0 at a peak);
* ``trend``: the close over its mean of the last ``trend_days`` days, minus 1;
* ``momentum``: the log return over the last 30 days.

Across coins: ``breadth``, the share of coins whose ``trend`` is positive (computed from the
same per-coin features at the same close). The controller adds the coin's first DRU components
(the refined on-chain metrics, known at the close; :class:`strategies.features.FeatureState`).

One kernel, :func:`window_features`, computes the features of a window of closes; the batch
function (:func:`coin_regime`, every bar of a history) and the bar-by-bar tracker
(:class:`RegimeTracker`) both call it on the same contiguous windows, so they give bit-identical
values, and a value at ``t`` cannot depend on a close after ``t`` (tests perturb the future).
Until a coin has a full window its features are NaN (not ready).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

COIN_FEATURES = ("volatility", "drawdown", "trend", "momentum")
MARKET_FEATURES = (*COIN_FEATURES, "breadth")
SHORT_DAYS = 7
MOMENTUM_DAYS = 30


class RegimeSpec:
    """Window lengths in bars for one timeframe."""

    def __init__(self, bar_ms: int, trend_days: int = 20, lookback_days: int = 90) -> None:
        per_day = 86_400_000 / bar_ms
        self.bars_per_year = per_day * 365.0
        self.short = max(2, round(SHORT_DAYS * per_day))
        self.trend = max(1, round(trend_days * per_day))
        self.momentum = max(1, round(MOMENTUM_DAYS * per_day))
        self.length = max(round(lookback_days * per_day), self.short, self.trend, self.momentum) + 1


def window_features(windows: np.ndarray, spec: RegimeSpec) -> np.ndarray:
    """Features ``(N, 4)`` of C-contiguous windows of closes ``(N, spec.length)`` (the last
    close is the current one)."""
    windows = np.ascontiguousarray(windows, dtype=np.float64)
    last = windows[:, -1]
    logs = np.log(windows[:, -spec.short - 1 :])
    returns = np.ascontiguousarray(logs[:, 1:] - logs[:, :-1])
    volatility = returns.std(axis=1) * math.sqrt(spec.bars_per_year)
    drawdown = 1.0 - last / windows.max(axis=1)
    trend = last / np.ascontiguousarray(windows[:, -spec.trend :]).mean(axis=1) - 1.0
    momentum = np.log(last / windows[:, -spec.momentum - 1])
    return np.stack((volatility, drawdown, trend, momentum), axis=1)


def coin_regime(close: np.ndarray, spec: RegimeSpec) -> np.ndarray:
    """Features ``(T, 4)`` at every bar of ``close (T,)`` (NaN before a full window)."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full((len(close), len(COIN_FEATURES)), np.nan)
    if len(close) >= spec.length:
        windows = sliding_window_view(close, spec.length)
        chunk = 4096  # contiguous copies, a few MB at a time
        for start in range(0, len(windows), chunk):
            part = np.ascontiguousarray(windows[start : start + chunk])
            out[spec.length - 1 + start : spec.length - 1 + start + len(part)] = window_features(
                part, spec
            )
    return out


def breadth(coin_features: Sequence[np.ndarray]) -> float:
    """Share of ready coins (features not NaN) whose trend is positive; NaN when none is."""
    ready = [f for f in coin_features if not np.isnan(f[0])]
    if not ready:
        return math.nan
    return sum(float(f[2] > 0.0) for f in ready) / len(ready)


def market_features(coin_features: Mapping[str, np.ndarray]) -> np.ndarray:
    """The manager's features ``(5,)``: the mean over ready coins of each coin feature, and the
    breadth (NaN when no coin is ready)."""
    ready = [f for f in coin_features.values() if not np.isnan(f[0])]
    if not ready:
        return np.full(len(MARKET_FEATURES), np.nan)
    mean = np.mean(np.stack(ready), axis=0)
    return np.append(mean, breadth(ready))


class RegimeTracker:
    """Bar-by-bar regime features of several coins (identical to :func:`coin_regime`)."""

    def __init__(self, coins: Sequence[str], spec: RegimeSpec) -> None:
        self.spec = spec
        self._closes: dict[str, deque[float]] = {c: deque(maxlen=spec.length) for c in coins}
        self._features: dict[str, np.ndarray] = {
            c: np.full(len(COIN_FEATURES), np.nan) for c in coins
        }

    def on_close(self, coin: str, close: float) -> np.ndarray:
        """Add ``coin``'s close of the bar that just closed; its features now."""
        closes = self._closes[coin]
        closes.append(float(close))
        if len(closes) == self.spec.length:
            window = np.asarray(closes, dtype=np.float64)[None]
            self._features[coin] = window_features(window, self.spec)[0]
        return self._features[coin]

    def coin(self, coin: str) -> np.ndarray:
        """``coin``'s features at its last close (NaN until ready)."""
        return self._features[coin]

    def breadth(self) -> float:
        """Share of ready coins in an up-trend."""
        return breadth(list(self._features.values()))

    def market(self) -> np.ndarray:
        """The manager's market features now."""
        return market_features(self._features)
