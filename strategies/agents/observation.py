"""The state of a Crypto Module: one function shared by the training env and the live handler.

The state at the close of bar ``t`` is, as in the paper, a tensor of shape ``(F, 2, n)``: ``F``
features for 2 assets (row 0 = cash, row 1 = the coin) over the ``n`` most recent intervals
``t - n + 1 .. t`` (latest last). The coin row holds, per interval ``i``:

* ``open_i / close_t - 1``, ``high_i / close_t - 1``, ``low_i / close_t - 1``,
  ``close_i / close_t - 1``, each times :data:`PRICE_SCALE` (price relatives to the latest
  close, as in EIIE, centred so that "no move" is 0);
* ``log(1 + volume_i) - log(1 + volume_t)`` (volume relative to the latest bar's);
* the ``k`` refined metrics of the DRU known at the close of ``i``, or zeros while the DRU's
  ``ready`` flag is False.

The cash row is constant: price relatives of 1 (so 0 after centring) and zeros. The state is a
pure function of data up to ``t``.

The SAM's state adds, as channels: the EAM's signals of the same ``n`` intervals (coin row; -1
sell, 0 hold, +1 buy) when an EAM is used, and last the weights held ``[1 - p, p]`` as a constant
position channel.

One code path (DESIGN property 4): :func:`build_observations` (every bar of a history at once, for
training; :func:`observations_between` for a chunk of it) and :class:`ObservationWindow` (bar by
bar, for the handler) both call
:func:`bar_rows` per bar and :func:`observations_between` (:func:`_write_coin_rows`) for their
windows, which use only ``+ - * /`` after a scalar ``math.log1p`` per bar, so their outputs are
bit-identical.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

OBSERVATION_VERSION = 1
"""Bumped whenever the state's layout or arithmetic changes; stored in every artifact."""

PRICE_FEATURES = ("open", "high", "low", "close", "volume")
"""The price channels, in order, before the DRU's features."""

PRICE_SCALE = 10.0
"""Multiplier of the centred price relatives: a 10 % move from the latest close reads 1.0."""

CASH_ROW, COIN_ROW = 0, 1


@dataclass(frozen=True)
class FeatureSchema:
    """What a state is made of; a trained network only fits states of the same schema."""

    metric_features: tuple[str, ...]
    window: int
    timeframe: str
    eam_signal: bool
    price_features: tuple[str, ...] = PRICE_FEATURES
    version: int = OBSERVATION_VERSION

    @property
    def n_features(self) -> int:
        """``F``: channels of the base state (price features then metric features)."""
        return len(self.price_features) + len(self.metric_features)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {
            "version": self.version,
            "price_features": list(self.price_features),
            "metric_features": list(self.metric_features),
            "window": self.window,
            "timeframe": self.timeframe,
            "eam_signal": self.eam_signal,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        """Inverse of :meth:`to_dict`."""
        return cls(
            metric_features=tuple(data["metric_features"]),
            window=int(data["window"]),
            timeframe=str(data["timeframe"]),
            eam_signal=bool(data["eam_signal"]),
            price_features=tuple(data["price_features"]),
            version=int(data["version"]),
        )

    def differences(self, other: FeatureSchema) -> list[str]:
        """Human-readable ``field: mine != other`` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]
        ]


def bar_rows(ohlcv: np.ndarray) -> np.ndarray:
    """Per-bar inputs ``(T, 5)``: open, high, low, close and ``log(1 + volume)`` (float64).

    ``log1p`` is taken one scalar at a time (``math.log1p``), so a bar's row has the same bits
    whether it is computed alone or with a whole history.
    """
    rows = np.array(ohlcv, dtype=np.float64, copy=True).reshape(-1, 5)
    rows[:, 4] = [math.log1p(v) for v in rows[:, 4].tolist()]
    return rows


def metric_rows(features: np.ndarray, ready: np.ndarray) -> np.ndarray:
    """The DRU's features ``(T, k)`` where ready, zeros where not (and for non-finite values)."""
    features = np.asarray(features, dtype=np.float64).reshape(len(ready), -1)
    usable = np.asarray(ready, dtype=bool)[:, None] & np.isfinite(features)
    return np.where(usable, features, 0.0)


def _write_coin_rows(rows: np.ndarray, metrics: np.ndarray, window: int, coin: np.ndarray) -> None:
    """The coin rows ``(L - window + 1, F, window)`` (``coin``, a view of the states or a
    layout of their own) of every full window of ``rows (L, 5)`` and ``metrics (L, k)``; the
    last interval of each window is its current bar. One channel at a time, each read from one
    contiguous series (about twice as fast as the windows of the bar-major rows); a window's
    values do not depend on how many are written at once."""
    columns = np.ascontiguousarray(rows.T)  # (5, L)
    last_close = columns[3, window - 1 :, None]
    for channel in range(4):
        relative = _windows(columns[channel], window) / last_close
        relative -= 1.0
        relative *= PRICE_SCALE
        coin[:, channel, :] = relative
    volume = columns[4]
    coin[:, 4, :] = _windows(volume, window) - volume[window - 1 :, None]
    coin[:, 5:, :] = _windows(metrics.T, window).transpose(1, 0, 2)


def _windows(series: np.ndarray, window: int) -> np.ndarray:
    """The windows ``(..., L - window + 1, window)`` along the last axis of ``series`` (a
    view); the series itself, as one window, for a bar-by-bar state (``sliding_window_view``
    costs more than the state's arithmetic there)."""
    if series.shape[-1] == window:
        return series[..., None, :]
    return sliding_window_view(series, window, axis=-1)


def build_observations(
    ohlcv: np.ndarray, features: np.ndarray, ready: np.ndarray, window: int
) -> np.ndarray:
    """States ``(T, F, 2, window)`` float32 at every bar of a history (zeros before bar
    ``window - 1``, which has no full window).

    ``ohlcv``: ``(T, 5)`` open, high, low, close, volume; ``features``/``ready``: the DRU's
    :class:`~strategies.features.pipeline.FeatureFrame` arrays for the same bars.
    """
    rows = bar_rows(ohlcv)
    metrics = metric_rows(features, ready)
    total, k = len(rows), metrics.shape[1]
    out = np.zeros((total, len(PRICE_FEATURES) + k, 2, window), dtype=np.float32)
    if total >= window:
        out[window - 1 :] = observations_between(rows, metrics, window, window - 1, total)
    return out


def observations_between(
    rows: np.ndarray, metrics: np.ndarray, window: int, start: int, stop: int
) -> np.ndarray:
    """The states ``(stop - start, F, 2, window)`` of bars ``start .. stop - 1`` (``start >=
    window - 1``) of a history's :func:`bar_rows` and :func:`metric_rows`: a slice of
    :func:`build_observations` with the same bits, for building a long history's states a
    chunk at a time."""
    if start < window - 1 or stop > len(rows) or stop < start:
        raise ValueError(f"bars {start}..{stop} have no full window of {window} in {len(rows)}")
    lo = start - window + 1
    out = np.zeros((stop - start, len(PRICE_FEATURES) + metrics.shape[1], 2, window), np.float32)
    _write_coin_rows(rows[lo:stop], metrics[lo:stop], window, out[:, :, COIN_ROW, :])
    return out


def coin_rows_between(
    rows: np.ndarray,
    metrics: np.ndarray,
    window: int,
    start: int,
    stop: int,
    *,
    time_major: bool = False,
) -> np.ndarray:
    """The coin rows ``(stop - start, F, window)`` of :func:`observations_between`'s states
    (the cash row of every state is zeros): what batched inference reads. ``time_major``: the
    same values laid out ``(stop - start, window, F)`` (for channels-last convolutions)."""
    if start < window - 1 or stop > len(rows) or stop < start:
        raise ValueError(f"bars {start}..{stop} have no full window of {window} in {len(rows)}")
    lo = start - window + 1
    features = len(PRICE_FEATURES) + metrics.shape[1]
    if time_major:
        out = np.empty((stop - start, window, features), np.float32)
        target = out.transpose(0, 2, 1)
    else:
        out = target = np.empty((stop - start, features, window), np.float32)
    _write_coin_rows(rows[lo:stop], metrics[lo:stop], window, target)
    return out


def signal_windows(signals: np.ndarray, window: int) -> np.ndarray:
    """EAM signal channel ``(T, 1, 2, window)`` float32: signals of the last ``window`` bars on
    the coin row (zeros before bar ``window - 1``)."""
    signals = np.asarray(signals, dtype=np.float32)
    out = np.zeros((len(signals), 1, 2, window), dtype=np.float32)
    if len(signals) >= window:
        out[window - 1 :, 0, COIN_ROW, :] = sliding_window_view(signals, window)
    return out


def with_position(state: np.ndarray, position: np.ndarray | float) -> np.ndarray:
    """``state (..., C, 2, n)`` with the position channel appended: ``1 - p`` on the cash row,
    ``p`` (the coin weight held) on the coin row."""
    state = np.asarray(state, dtype=np.float32)
    p = np.asarray(position, dtype=np.float32)[..., None]
    channel = np.empty((*state.shape[:-3], 1, 2, state.shape[-1]), dtype=np.float32)
    channel[..., 0, CASH_ROW, :] = 1.0 - p
    channel[..., 0, COIN_ROW, :] = p
    return np.concatenate((state, channel), axis=-3)


class ObservationWindow:
    """Bar-by-bar states of one coin, identical to :func:`build_observations` at every bar."""

    def __init__(self, window: int, width: int) -> None:
        self.window, self.width = window, width
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self._metrics: deque[np.ndarray] = deque(maxlen=window)

    @property
    def full(self) -> bool:
        """Whether ``window`` bars have been pushed (a state exists)."""
        return len(self._rows) == self.window

    def push(
        self, ohlcv: tuple[float, float, float, float, float], features: np.ndarray, ready: bool
    ) -> np.ndarray | None:
        """Add a closed bar and the DRU's features at its close; the state ``(F, 2, n)`` once
        the window is full, else None."""
        self._rows.append(bar_rows(np.asarray(ohlcv, dtype=np.float64))[0])
        feats = np.asarray(features, dtype=np.float64).reshape(1, self.width)
        self._metrics.append(metric_rows(feats, np.array([ready]))[0])
        if not self.full:
            return None
        # stacked channel-major, handed over as (n, 5) and (n, k) views: the writer reads
        # channels, so it copies nothing
        rows = np.stack(self._rows, axis=1).T
        metrics = np.stack(self._metrics, axis=1).reshape(self.width, self.window).T
        return observations_between(rows, metrics, self.window, self.window - 1, self.window)[0]

    def extend(self, ohlcv: np.ndarray, features: np.ndarray, ready: np.ndarray) -> None:
        """Add many closed bars at once (``(T, 5)``, ``(T, k)``, ``(T,)``), leaving the window
        exactly as pushing them one by one would (only the last ``window`` bars are kept)."""
        tail = slice(max(0, len(ohlcv) - self.window), len(ohlcv))
        rows = bar_rows(np.asarray(ohlcv, dtype=np.float64)[tail])
        feats = np.asarray(features, dtype=np.float64).reshape(len(ohlcv), self.width)[tail]
        metrics = metric_rows(feats, np.asarray(ready, dtype=bool)[tail])
        self._rows.extend(rows)
        self._metrics.extend(metrics)
