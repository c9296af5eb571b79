"""The replay driver: stored history published through the engine's bus, in known-time order.

For every bar close time ``t`` (ascending), the driver publishes:

1. every ``Metric`` whose ``known_at <= t`` not yet published (by known time, asset, name);
2. every ``Bar`` closing at ``t`` (by symbol);
3. ``BarsClosed(t)`` when ``t`` lies in the decision window ``[start_ms, end_ms)``.

Bars and metrics before ``start_ms`` are still published (warm-up: feature state and network
windows fill exactly as in training), but no decision is asked for. The simulated clock follows
``t``; nothing closing at or after ``end_ms`` is published (the windows are half-open like the
training windows). The driver also serves :meth:`next_open` to the simulated broker: an order
decided at ``t`` fills at the open of the first bar opening at or after ``t``, which may lie
past ``end_ms``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from bot.bus import EventBus
from bot.clock import SimClock
from bot.events import Bar, BarsClosed, Metric
from bot.store import MarketStore, MetricStore
from bot.timeframes import timeframe_ms

Progress = Callable[[int, int], None]


class ReplayDriver:
    """Publishes in-memory bars (per symbol) and metrics (long frame) into a bus."""

    def __init__(
        self,
        bars: Mapping[str, pd.DataFrame],
        *,
        exchange: str,
        timeframe: str,
        metrics: pd.DataFrame | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> None:
        self.exchange = exchange
        self.timeframe = timeframe
        self.step_ms = timeframe_ms(timeframe)
        self.symbols = tuple(sorted(bars))
        self.clock = SimClock()
        self._opens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        columns = []
        for index, symbol in enumerate(self.symbols):
            frame = bars[symbol]
            open_time = frame["open_time"].to_numpy(dtype=np.int64)
            self._opens[symbol] = (open_time, frame["open"].to_numpy(dtype=np.float64))
            columns.append((open_time, np.full(len(frame), index), frame))
        self._open_time = np.concatenate([c[0] for c in columns]) if columns else np.array([])
        symbol_index = np.concatenate([c[1] for c in columns]) if columns else np.array([])
        ohlcv = (
            np.concatenate(
                [
                    f[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
                    for *_, f in columns
                ]
            )
            if columns
            else np.empty((0, 5))
        )
        order = np.lexsort((symbol_index, self._open_time))
        self._open_time = self._open_time[order]
        self._symbol_index = symbol_index[order].astype(np.int64)
        self._ohlcv = ohlcv[order]
        first_close = int(self._open_time[0]) + self.step_ms if len(order) else 0
        last_close = int(self._open_time[-1]) + self.step_ms if len(order) else 0
        self.start_ms = first_close if start_ms is None else int(start_ms)
        self.end_ms = last_close + 1 if end_ms is None else int(end_ms)
        self._metrics = _sorted_metrics(metrics)

    @classmethod
    async def from_stores(
        cls,
        market: MarketStore,
        metric_store: MetricStore | None,
        *,
        exchange: str,
        symbols: Sequence[str],
        timeframe: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> ReplayDriver:
        """Load the symbols' bars (the whole stored history: warm-up included) and every metric."""
        bars = {s: await market.read_candles(exchange, s, timeframe) for s in symbols}
        metrics = await metric_store.read_metrics() if metric_store is not None else None
        return cls(
            bars,
            exchange=exchange,
            timeframe=timeframe,
            metrics=metrics,
            start_ms=start_ms,
            end_ms=end_ms,
        )

    def next_open(self, symbol: str, ts: int) -> tuple[int, float] | None:
        """(open time, open) of the first ``symbol`` bar opening at or after ``ts``, if any."""
        open_time, opens = self._opens[symbol]
        i = int(np.searchsorted(open_time, ts, side="left"))
        if i == len(open_time):
            return None
        return int(open_time[i]), float(opens[i])

    @property
    def decision_count(self) -> int:
        """How many ``BarsClosed`` decisions the run will ask for."""
        closes = np.unique(self._open_time + self.step_ms)
        return int(((closes >= self.start_ms) & (closes < self.end_ms)).sum())

    async def run(self, bus: EventBus, progress: Progress | None = None) -> None:
        """Publish everything up to ``end_ms`` into ``bus``, in known-time order.

        Each run starts a fresh simulated clock, so one driver can replay for several engines.
        """
        self.clock = SimClock()
        exchange, timeframe, step = self.exchange, self.timeframe, self.step_ms
        symbols, start, end = self.symbols, self.start_ms, self.end_ms
        open_time, symbol_index, ohlcv = self._open_time, self._symbol_index, self._ohlcv
        m_known, m_asset, m_name, m_observed, m_value = self._metrics
        n_metrics, m = len(m_known), 0
        n = len(open_time)
        total = self.decision_count
        done = 0
        emit, drain = bus.emit, bus.drain
        rows = ohlcv.tolist()
        times = open_time.tolist()
        indexes = symbol_index.tolist()
        i = 0
        # Each instant is queued whole (metrics, bars, decision) and dispatched by one drain:
        # the bus delivers in queue order, so this is the same as publishing one by one.
        while i < n:
            t_open = times[i]
            close = t_open + step
            if close >= end:
                break
            while m < n_metrics and m_known[m] <= close:
                emit(Metric(m_known[m], m_asset[m], m_name[m], m_observed[m], m_value[m]))
                m += 1
            self.clock.advance_to(close)
            present = []
            while i < n and times[i] == t_open:
                o, h, lo, c, v = rows[i]
                symbol = symbols[indexes[i]]
                present.append(symbol)
                emit(Bar(close, exchange, symbol, timeframe, t_open, o, h, lo, c, v))
                i += 1
            if close >= start:
                emit(BarsClosed(close, timeframe, tuple(present)))
                done += 1
                if progress is not None and (done % 256 == 0 or done == total):
                    progress(done, total)
            await drain()


def _sorted_metrics(
    metrics: pd.DataFrame | None,
) -> tuple[list[int], list[str], list[str], list[int], list[float]]:
    if metrics is None or metrics.empty:
        return [], [], [], [], []
    frame = metrics.sort_values(["known_at", "asset", "name", "observed_at"], kind="stable")
    return (
        frame["known_at"].astype("int64").tolist(),
        frame["asset"].astype(str).tolist(),
        frame["name"].astype(str).tolist(),
        frame["observed_at"].astype("int64").tolist(),
        frame["value"].astype("float64").tolist(),
    )
