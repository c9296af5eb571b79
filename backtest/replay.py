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
from itertools import chain, islice, repeat

import numpy as np
import pandas as pd

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
        self._opens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._closes: dict[str, np.ndarray] = {}
        self._rows: dict[str, np.ndarray] = {}
        times, indexes, rows = [], [], []
        for index, symbol in enumerate(self.symbols):
            frame = bars[symbol]
            open_time = frame["open_time"].to_numpy(dtype=np.int64)
            ohlcv = frame[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
            if len(open_time) > 1 and not (np.diff(open_time) > 0).all():
                order = np.argsort(open_time, kind="stable")
                open_time, ohlcv = open_time[order], ohlcv[order]
            self._opens[symbol] = (open_time, ohlcv[:, 0])  # views, not copies
            self._rows[symbol] = ohlcv
            self._closes[symbol] = ohlcv[:, 3]
            times.append(open_time)
            indexes.append(np.full(len(frame), index, dtype=np.int64))
            rows.append(ohlcv)
        if len(rows) == 1:  # one symbol: already in order, nothing to merge or copy
            self._open_time, self._symbol_index, self._ohlcv = times[0], indexes[0], rows[0]
        elif rows:
            open_time, symbol_index = np.concatenate(times), np.concatenate(indexes)
            order = np.lexsort((symbol_index, open_time))
            self._open_time = open_time[order]
            self._symbol_index = symbol_index[order]
            self._ohlcv = np.concatenate(rows)[order]
        else:
            self._open_time = np.empty(0, np.int64)
            self._symbol_index = np.empty(0, np.int64)
            self._ohlcv = np.empty((0, 5))
        # One instant per distinct close: its first row in the sorted arrays.
        closes = self._open_time + self.step_ms
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
        i = int(open_time.searchsorted(ts))
        if i == len(open_time):
            return None
        return int(open_time[i]), float(opens[i])

    def next_bar(self, symbol: str, ts: int) -> tuple[int, float, float, float] | None:
        """(open time, open, close, volume) of the first ``symbol`` bar opening at or after
        ``ts``: the bar an order decided at ``ts`` executes in."""
        open_time, _ = self._opens[symbol]
        i = int(open_time.searchsorted(ts))
        if i == len(open_time):
            return None
        row = self._rows[symbol][i]
        return int(open_time[i]), float(row[0]), float(row[3]), float(row[4])

    def closes_at(self, ts: np.ndarray) -> dict[str, np.ndarray]:
        """Each symbol's latest close at or before each time of ``ts`` (NaN before its first)."""
        out = {}
        for symbol, close in self._closes.items():
            close_time = self._opens[symbol][0] + self.step_ms
            i = np.searchsorted(close_time, ts, side="right") - 1
            if len(close) == 0:
                out[symbol] = np.full(len(ts), np.nan)
            else:
                out[symbol] = np.where(i >= 0, close[np.clip(i, 0, None)], np.nan)
        return out

    def instant_times(self) -> np.ndarray:
        """The close time of every instant the replay yields, in order (warm-up included)."""
        closes = self._instant_close
        return closes[: int(np.searchsorted(closes, self.end_ms, side="left"))]

    def replayed_bars(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """Open times ``(T,)`` and OHLCV rows ``(T, 5)`` of the ``symbol`` bars that
        :meth:`instants` yields, in the order it yields them (for a policy's ``prepare``)."""
        if symbol not in self.symbols:
            return np.empty(0, np.int64), np.empty((0, 5))
        closes = self._open_time + self.step_ms
        mine = (self._symbol_index == self.symbols.index(symbol)) & (closes < self.end_ms)
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

        A replay's time is the instant's ``ts``: nothing in the engine reads a clock. Runs of
        instants with the same number of bars and no metric are built by C-level ``map``/
        ``zip`` over the columns (no Python code per bar), the others one by one; both give
        the same instants (tests compare them with :func:`bot.engine.step.instants`).
        """
        closes = self._instant_close
        n = int(np.searchsorted(closes, self.end_ms, side="left"))
        return chain.from_iterable(self._segments(closes[:n], progress))

    def _segments(
        self, closes: np.ndarray, progress: Progress | None
    ) -> Iterator[Iterator[Instant]]:
        """The instants of ``closes``, CHUNK at a time: only one chunk's columns exist as
        Python objects at once, so a replay of millions of bars stays small in memory."""
        m_known, m_asset, m_name, m_observed, m_value = self._metrics
        n = len(closes)
        bounds = np.r_[self._instant_start, len(self._open_time)][: n + 1]  # rows per instant
        counts = np.diff(bounds)
        # Metrics known in (previous close, close] belong to an instant.
        metric_end = np.searchsorted(np.asarray(m_known, dtype=np.int64), closes, "right")
        metric_begin = np.r_[0, metric_end[:-1]] if n else metric_end
        decides = closes >= self.start_ms
        decided = np.cumsum(decides)
        total = int(decided[-1]) if n else 0
        new, no_metrics = tuple.__new__, ()
        for k0 in range(0, n, CHUNK):
            k1 = min(n, k0 + CHUNK)
            bars = self._bars(int(bounds[k0]), int(bounds[k1]))
            times = closes[k0:k1].tolist()
            widths = counts[k0:k1].tolist()
            has_metrics = (metric_end[k0:k1] > metric_begin[k0:k1]).tolist()
            deciding = decides[k0:k1].tolist()
            k, size = 0, k1 - k0
            while k < size:
                # The longest run from k of instants with k's bar count and no metric: handed
                # over whole, as a C-level iterator (no Python code per instant).
                width, run_end = widths[k], k
                while run_end < size and widths[run_end] == width and not has_metrics[run_end]:
                    run_end += 1
                if run_end - k >= 8:
                    groups = zip(*[islice(bars, width * (run_end - k))] * width, strict=True)
                    yield map(
                        new,
                        repeat(Instant),
                        zip(times[k:run_end], repeat(no_metrics), groups, deciding[k:run_end]),
                    )
                    k = run_end
                    continue
                first, last = int(metric_begin[k0 + k]), int(metric_end[k0 + k])
                known = tuple(
                    Metric(m_known[j], m_asset[j], m_name[j], m_observed[j], m_value[j])
                    for j in range(first, last)
                )
                group = tuple(islice(bars, widths[k]))
                yield iter((new(Instant, (times[k], known, group, deciding[k])),))
                k += 1
            if progress is not None and total:
                progress(int(decided[k1 - 1]), total)

    def _bars(self, lo: int, hi: int) -> Iterator[Bar]:
        """Bars of rows ``[lo, hi)`` in (close, symbol) order, built by C-level code
        (``tuple.__new__`` over zipped columns: no Python constructor call per bar)."""
        names = self.symbols
        symbols = [names[i] for i in self._symbol_index[lo:hi].tolist()]
        o, h, low, c, v = (self._ohlcv[lo:hi, j].tolist() for j in range(5))
        return map(
            tuple.__new__,
            repeat(Bar),
            zip(
                (self._open_time[lo:hi] + self.step_ms).tolist(),
                repeat(self.exchange),
                symbols,
                repeat(self.timeframe),
                self._open_time[lo:hi].tolist(),
                o,
                h,
                low,
                c,
                v,
                strict=True,
            ),
        )


CHUNK = 4096
"""Most instants built in one C-level run (and between two progress reports)."""


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
