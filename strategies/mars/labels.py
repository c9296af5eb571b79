"""The safety critics' cost: did holding the coin lose more than ``D`` within ``H`` bars?

For a decision at the close of bar ``t`` the cost of holding the coin is the forward drawdown
label

    ``y_t = 1  if  min(close_{t+1}, ..., close_{t+H}) <= (1 - D) * close_t,  else 0``

(the cost of cash is 0). It is a label, so it lies in the future of ``t`` by construction; what
makes it causal is where it may come from:

* it reads only the closes ``t .. t + H`` of the coin itself (no statistic of the training set as
  a whole: MARS's reference code regresses a risk score computed over the last 30 days of its
  training data for every state, so early states learn from data months ahead of them);
* a label exists only when ``t + H <= last``, the last bar the training window holds: the labels
  of the last ``H`` decisions of the window are left out instead of peeking past its end
  (like the DRU's forward-return labels).

A test perturbs every close after ``last`` and gets the same labels (and the same trained
networks); another perturbs closes after ``t + H`` and gets the same ``y_t``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def horizon_bars(horizon_days: float, timeframe_ms: int) -> int:
    """The horizon in bars of ``timeframe_ms`` (at least one)."""
    return max(1, round(horizon_days * 86_400_000 / timeframe_ms))


def forward_drawdown_labels(
    close: np.ndarray, horizon: int, drawdown: float, last: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``y (T,)`` (float32, 0 or 1) and their mask ``known (T,)`` (bool) for every bar
    ``t`` of ``close (T,)``: ``known[t]`` iff ``t + horizon <= last`` (and ``last < T``)."""
    close = np.asarray(close, dtype=np.float64)
    total = len(close)
    if not 0 <= last < total:
        raise ValueError(f"last bar {last} outside the {total} closes")
    labels = np.zeros(total, dtype=np.float32)
    known = np.zeros(total, dtype=bool)
    count = last - horizon + 1  # bars t = 0 .. last - horizon have a full future
    if count <= 0:
        return labels, known
    future = sliding_window_view(close[1 : last + 1], horizon)[:count]  # closes t+1 .. t+H
    lowest = future.min(axis=1)
    labels[:count] = (lowest <= (1.0 - drawdown) * close[:count]).astype(np.float32)
    known[:count] = True
    return labels, known
