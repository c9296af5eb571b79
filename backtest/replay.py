"""The replay driver: stored history as the engine's instants, in known-time order.

For every bar close time ``t`` (ascending) the driver yields one
:class:`~bot.engine.step.Instant`: the metrics whose ``known_at <= t`` not yet yielded (by known
time, asset, name), the bars closing at ``t`` (by symbol), and whether ``t`` lies in the decision
window ``[start_ms, end_ms)``. Bars and metrics before ``start_ms`` still make instants (warm-up:
feature state and network windows fill exactly as in training), but no decision is taken.
Nothing closing at or after ``end_ms`` is yielded (the windows are half-open like the training
windows). The driver also serves :meth:`next_open` to the simulated venue: an order decided at
``t`` fills at the open of the first bar opening at or after ``t``, which may lie past
``end_ms``.

:meth:`ReplayDriver.instants` is the vectorised twin of :func:`bot.engine.step.instants` (the
live driver's): a test checks they build the same instants from the same history.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from bot.clock import SimClock
from bot.engine.step import Instant
from bot.events import Bar, Metric
from bot.store import MarketStore, MetricStore
from bot.timeframes import timeframe_ms

Progress = Callable[[int, int], None]


class ReplayDriver:
    """In-memory bars (per symbol) and metrics (long frame), replayed as instants."""

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
        self._closes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        times, indexes, rows = [], [], []
        for index, symbol in enumerate(self.symbols):
            frame = bars[symbol]
            open_time = frame["open_time"].to_numpy(dtype=np.int64)
            ohlcv = frame[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
            self._opens[symbol] = (open_time, ohlcv[:, 0].copy())
            self._closes[symbol] = (open_time + self.step_ms, ohlcv[:, 3].copy())
            times.append(open_time)
            indexes.append(np.full(len(frame), index, dtype=np.int64))
            rows.append(ohlcv)
        open_time = np.concatenate(times) if times else np.empty(0, np.int64)
        symbol_index = np.concatenate(indexes) if indexes else np.empty(0, np.int64)
        ohlcv = np.concatenate(rows) if rows else np.empty((0, 5))
        order = np.lexsort((symbol_index, open_time))
        self._open_time = open_time[order]
        self._symbol_index = symbol_index[order]
        self._ohlcv = ohlcv[order]
        # One instant per distinct close: its first row in the sorted arrays.
        closes = self._open_time + self.step_ms
        self._closes_all = closes
        first = np.flatnonzero(np.r_[True, closes[1:] != closes[:-1]]) if len(closes) else closes
        self._instant_close = closes[first] if len(closes) else np.empty(0, np.int64)
        self._instant_start = first
        last_close = int(closes[-1]) if len(closes) else 0
        if start_ms is not None:
            self.start_ms = int(start_ms)
        else:
            self.start_ms = int(self._instant_close[0]) if len(first) else 0
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

    def closes_at(self, ts: np.ndarray) -> dict[str, np.ndarray]:
        """Each symbol's latest close at or before each time of ``ts`` (NaN before its first)."""
        out = {}
        for symbol, (close_time, close) in self._closes.items():
            i = np.searchsorted(close_time, ts, side="right") - 1
            if len(close) == 0:
                out[symbol] = np.full(len(ts), np.nan)
            else:
                out[symbol] = np.where(i >= 0, close[np.clip(i, 0, None)], np.nan)
        return out

    def replayed_bars(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """Open times ``(T,)`` and OHLCV rows ``(T, 5)`` of the ``symbol`` bars that
        :meth:`instants` yields, in the order it yields them (for a policy's ``prepare``)."""
        if symbol not in self.symbols:
            return np.empty(0, np.int64), np.empty((0, 5))
        mine = (self._symbol_index == self.symbols.index(symbol)) & (self._closes_all < self.end_ms)
        return self._open_time[mine], self._ohlcv[mine]

    def replayed_metrics(self) -> pd.DataFrame:
        """The metrics :meth:`instants` yields, in the order it yields them: ``known_at`` (the
        ``Metric``'s ``ts``), ``asset``, ``name``, ``observed_at``, ``value``."""
        known, asset, name, observed, value = self._metrics
        closes = self._instant_close[self._instant_close < self.end_ms]
        count = bisect.bisect_right(known, int(closes[-1])) if len(closes) else 0
        return pd.DataFrame(
            {
                "known_at": np.array(known[:count], dtype=np.int64),
                "asset": asset[:count],
                "name": name[:count],
                "observed_at": np.array(observed[:count], dtype=np.int64),
                "value": np.array(value[:count], dtype=np.float64),
            }
        )

    @property
    def decision_count(self) -> int:
        """How many decisions the run will take."""
        closes = self._instant_close
        lo = int(np.searchsorted(closes, self.start_ms, side="left"))
        hi = int(np.searchsorted(closes, self.end_ms, side="left"))
        return max(0, hi - lo)

    def instants(self, progress: Progress | None = None) -> Iterator[Instant]:
        """Every instant up to ``end_ms``, in close order (see the module docstring).

        Each call starts a fresh simulated clock, so one driver can replay for several engines.
        """
        self.clock = SimClock()
        exchange, timeframe = self.exchange, self.timeframe
        symbols, start, end = self.symbols, self.start_ms, self.end_ms
        m_known, m_asset, m_name, m_observed, m_value = self._metrics
        n_metrics, m = len(m_known), 0
        closes = self._instant_close.tolist()
        bounds = [*self._instant_start.tolist(), len(self._open_time)]
        times = self._open_time.tolist()
        indexes = self._symbol_index.tolist()
        rows = self._ohlcv.tolist()
        total, done = self.decision_count, 0
        advance = self.clock.advance_to
        no_metrics: tuple[Metric, ...] = ()
        for k, close in enumerate(closes):
            if close >= end:
                break
            known = no_metrics
            if m < n_metrics and m_known[m] <= close:
                first = m
                while m < n_metrics and m_known[m] <= close:
                    m += 1
                known = tuple(
                    Metric(m_known[j], m_asset[j], m_name[j], m_observed[j], m_value[j])
                    for j in range(first, m)
                )
            advance(close)
            bars = tuple(
                Bar(close, exchange, symbols[indexes[i]], timeframe, times[i], *rows[i])
                for i in range(bounds[k], bounds[k + 1])
            )
            deciding = close >= start
            yield Instant(close, known, bars, deciding)
            if deciding:
                done += 1
                if progress is not None and (done % 256 == 0 or done == total):
                    progress(done, total)


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
