"""Explanations over a stored or replayed history: many decisions of one module at once.

A backtest's modules decide from a precomputed plan, and ``cryptorlpm explain`` reads a run
after the fact, so neither has the live module's last state. :func:`explain_bars` rebuilds the
states the module read at the chosen bar closes from the bars and metric events it was given
(the DRU's features with :meth:`~strategies.features.FeatureState.read_history`, exactly as
:meth:`~strategies.crypto_module.CryptoModule.prepare` builds them) and explains them in
batches (:func:`strategies.explain.explain_history`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bot.timeframes import timeframe_ms
from strategies.explain import Explanation, explain_history
from strategies.features import FeatureState
from strategies.features.pool import split_id
from strategies.registry import LoadedCryptoModule


def evenly_spaced(values: Sequence[int], limit: int) -> list[int]:
    """At most ``limit`` of ``values``, evenly spaced, first and last included (the last
    alone for a limit of 1)."""
    values = list(values)
    if limit <= 0 or len(values) <= limit:
        return values
    if limit == 1:
        return values[-1:]
    picks = np.unique(np.linspace(0, len(values) - 1, limit).round().astype(int))
    return [values[i] for i in picks]


def explain_bars(
    model: LoadedCryptoModule,
    timeframe: str,
    open_time: np.ndarray,
    ohlcv: np.ndarray,
    metrics: pd.DataFrame,
    positions: np.ndarray,
    closes: Sequence[int],
) -> list[Explanation]:
    """Explain ``model``'s decisions at the bar closes ``closes`` of a history read from its
    first bar: ``open_time (T,)``, ``ohlcv (T, 5)`` at ``timeframe``, the metric events in
    publish order (``known_at, asset, name, observed_at, value``; others than the module's are
    ignored) and the coin weight held at each bar ``positions (T,)``. Closes that are not bars
    of the history, or where the module took no decision from its networks, are left out."""
    step = timeframe_ms(timeframe)
    open_time = np.asarray(open_time, dtype=np.int64)
    close = open_time + step
    spec = model.feature_spec
    if spec is None:
        features, ready = np.zeros((len(close), 0)), np.ones(len(close), dtype=bool)
    else:
        keys = {split_id(i) for i in spec.metric_ids}
        pairs = zip(metrics["asset"].tolist(), metrics["name"].tolist(), strict=True)
        mine = metrics[np.fromiter((p in keys for p in pairs), bool, len(metrics))]
        frame = FeatureState(spec, step).read_history(close, mine)
        features, ready = frame.features, frame.ready
    wanted = np.asarray(list(closes), dtype=np.int64)
    index = np.searchsorted(close, wanted)
    found = (index < len(close)) & (close[np.minimum(index, len(close) - 1)] == wanted)
    return explain_history(
        model,
        np.asarray(ohlcv, dtype=np.float64),
        features,
        ready,
        positions,
        index[found].tolist(),
        ts=close.tolist(),
    )
