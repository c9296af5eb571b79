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

from bot.engine.account import coin_of
from bot.engine.step import Instant, Stretch
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
        self._one_bar_per_close = True
        """No symbol has two bars opening at the same time (a stretch may read its closes as
        an (instant, symbol) grid when every instant has one bar per symbol)."""
        for index, symbol in enumerate(self.symbols):
            frame = bars[symbol]
            open_time = frame["open_time"].to_numpy(dtype=np.int64)
            ohlcv = frame[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
            if len(open_time) > 1 and not (np.diff(open_time) > 0).all():
                order = np.argsort(open_time, kind="stable")
                open_time, ohlcv = open_time[order], ohlcv[order]
                if (np.diff(open_time) == 0).any():
                    self._one_bar_per_close = False
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
        self._metrics, self._metric_table = _sorted_metrics(metrics)

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
        known = self._metrics[0]
        closes = self._instant_close[self._instant_close < self.end_ms]
        count = bisect.bisect_right(known, int(closes[-1])) if len(closes) else 0
        return self._metric_table.iloc[:count]

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
        return chain.from_iterable(self.runs(progress))  # type: ignore[arg-type]

    def runs(
        self, progress: Progress | None = None, quiet: np.ndarray | None = None
    ) -> Iterator[Iterator[Instant] | Stretch]:
        """The instants of :meth:`instants`, in runs (iterators of instants), ``CHUNK`` at a
        time: only one chunk's columns exist as Python objects at once, so a replay of millions
        of bars stays small in memory.

        ``quiet`` (a policy's ``quiet_instants``, one boolean per instant of
        :meth:`instant_times`): every run of at least ``MIN_STRETCH`` quiet instants comes as
        one :class:`~bot.engine.step.Stretch` instead, its bars never built one by one (unless
        two symbols are quoted for one coin).
        """
        if quiet is not None and len({coin_of(s) for s in self.symbols}) < len(self.symbols):
            quiet = None  # two symbols price one coin: only stepping orders their bars
        plan = _Plan(self)
        n, bounds = len(plan.closes), plan.bounds
        for k0 in range(0, n, CHUNK):
            k1 = min(n, k0 + CHUNK)
            pieces = _pieces(quiet, k0, k1)
            if len(pieces) == 1 and not pieces[0][2]:
                yield from self._instant_runs(plan, k0, k1, self._bars(bounds[k0], bounds[k1]))
            else:
                # One pass builds the bars of every stepped piece; stretches build none.
                stepped = np.zeros(k1 - k0, dtype=bool)
                for a, b, coasts in pieces:
                    stepped[a - k0 : b - k0] = not coasts
                counts = plan.counts[k0:k1]
                rows = np.flatnonzero(np.repeat(stepped, counts)) + bounds[k0]
                bars = self._bars_at(rows)
                # full[k]: how many of the chunk's first k instants close every symbol's bar.
                full = np.r_[0, np.cumsum(counts == len(self.symbols))].tolist()
                grid = self._one_bar_per_close
                for a, b, coasts in pieces:
                    if coasts:
                        aligned = grid and full[b - k0] - full[a - k0] == b - a
                        yield self._stretch(plan, a, b, aligned)
                    else:
                        yield from self._instant_runs(plan, a, b, bars)
            if progress is not None and plan.total:
                progress(int(plan.decided[k1 - 1]), plan.total)

    def _instant_runs(
        self, plan: _Plan, k0: int, k1: int, bars: Iterator[Bar]
    ) -> Iterator[Iterator[Instant]]:
        """The instants ``[k0, k1)`` as iterators, their bars taken from ``bars`` in order: the
        longest runs of instants with the same bar count and no metric handed over whole, as
        C-level iterators (no Python code per instant), the others one by one."""
        m_known, m_asset, m_name, m_observed, m_value = self._metrics
        metric_begin, metric_end = plan.metric_begin, plan.metric_end
        new, no_metrics = tuple.__new__, ()
        times = plan.closes[k0:k1].tolist()
        widths = plan.counts[k0:k1].tolist()
        has_metrics = (metric_end[k0:k1] > metric_begin[k0:k1]).tolist()
        deciding = plan.decides[k0:k1].tolist()
        k, size = 0, k1 - k0
        while k < size:
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

    def _stretch(self, plan: _Plan, k0: int, k1: int, aligned: bool) -> Stretch:
        """The instants ``[k0, k1)`` as a :class:`~bot.engine.step.Stretch`: their times,
        each coin's close path and last bar, built vectorised. ``aligned``: every symbol
        closes a bar at each of them."""
        lo, hi = int(plan.bounds[k0]), int(plan.bounds[k1])
        m = k1 - k0
        width = len(self.symbols)
        symbol_rows = self._symbol_index[lo:hi]
        close = self._ohlcv[lo:hi, 3]
        closes: dict[str, tuple[int, np.ndarray]] = {}
        last_rows: list[tuple[int, int]] = []  # (a coin's first row, its last row)
        if aligned:
            # Every symbol closes a bar at every instant: rows are (instant, symbol) ordered.
            paths = close.reshape(m, width)
            for s, symbol in enumerate(self.symbols):
                closes[coin_of(symbol)] = (0, paths[:, s])
                last_rows.append((lo + s, hi - width + s))
        else:
            instant_of_row = np.repeat(np.arange(m), plan.counts[k0:k1])
            for s, symbol in enumerate(self.symbols):
                mine = np.flatnonzero(symbol_rows == s)
                if not len(mine):
                    continue
                latest = np.full(m, -1, dtype=np.int64)
                latest[instant_of_row[mine]] = mine
                np.maximum.accumulate(latest, out=latest)
                first = int(instant_of_row[mine[0]])
                closes[coin_of(symbol)] = (first, close[np.maximum(latest, 0)])
                last_rows.append((lo + int(mine[0]), lo + int(mine[-1])))
        step, exchange, timeframe, names = self.step_ms, self.exchange, self.timeframe, self.symbols
        last_bars = tuple(
            Bar(
                int(self._open_time[r]) + step,
                exchange,
                names[int(self._symbol_index[r])],
                timeframe,
                int(self._open_time[r]),
                *self._ohlcv[r].tolist(),
            )
            for _, r in sorted(last_rows)  # in first-bar order: the order stepping meets them
        )
        return Stretch(
            plan.closes[k0:k1],
            plan.decides[k0:k1],
            closes,
            last_bars,
            lambda: chain.from_iterable(
                self._instant_runs(plan, k0, k1, self._bars(lo, hi))  # type: ignore[arg-type]
            ),
        )

    def _bars(self, lo: int, hi: int) -> Iterator[Bar]:
        """Bars of rows ``[lo, hi)`` in (close, symbol) order, built by C-level code
        (``tuple.__new__`` over zipped columns: no Python constructor call per bar)."""
        return self._bars_at(slice(int(lo), int(hi)))

    def _bars_at(self, rows: slice | np.ndarray) -> Iterator[Bar]:
        """Bars of ``rows`` (a slice, or row numbers in (close, symbol) order), built by
        C-level code."""
        names = self.symbols
        symbols = [names[i] for i in self._symbol_index[rows].tolist()]
        ohlcv = self._ohlcv[rows]
        o, h, low, c, v = (ohlcv[:, j].tolist() for j in range(5))
        open_time = self._open_time[rows]
        return map(
            tuple.__new__,
            repeat(Bar),
            zip(
                (open_time + self.step_ms).tolist(),
                repeat(self.exchange),
                symbols,
                repeat(self.timeframe),
                open_time.tolist(),
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

MIN_STRETCH = 8
"""Fewest quiet instants handed to the engine as one stretch (shorter runs are stepped)."""


class _Plan:
    """What :meth:`ReplayDriver.runs` computes once per replay: per instant its close, rows,
    metrics and whether it decides."""

    def __init__(self, driver: ReplayDriver) -> None:
        all_closes = driver._instant_close
        n = int(np.searchsorted(all_closes, driver.end_ms, side="left"))
        self.closes = closes = all_closes[:n]
        self.bounds = np.r_[driver._instant_start, len(driver._open_time)][: n + 1]
        self.counts = np.diff(self.bounds)
        # Metrics known in (previous close, close] belong to an instant.
        known = np.asarray(driver._metrics[0], dtype=np.int64)
        self.metric_end = np.searchsorted(known, closes, "right")
        self.metric_begin = np.r_[0, self.metric_end[:-1]] if n else self.metric_end
        self.decides = closes >= driver.start_ms
        self.decided = np.cumsum(self.decides)
        self.total = int(self.decided[-1]) if n else 0


def _pieces(quiet: np.ndarray | None, k0: int, k1: int) -> list[tuple[int, int, bool]]:
    """``[k0, k1)`` cut into ranges to step and runs of at least ``MIN_STRETCH`` quiet
    instants to coast: ``(start, end, coasts)`` in order."""
    if quiet is None:
        return [(k0, k1, False)]
    flags = np.r_[False, quiet[k0:k1], False].view(np.int8)
    edges = np.flatnonzero(np.diff(flags)) + k0
    pieces, at = [], k0
    for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        if end - start >= MIN_STRETCH:
            if start > at:
                pieces.append((at, start, False))
            pieces.append((start, end, True))
            at = end
    if at < k1:
        pieces.append((at, k1, False))
    return pieces


def _sorted_metrics(
    metrics: pd.DataFrame | None,
) -> tuple[tuple[list[int], list[str], list[str], list[int], list[float]], pd.DataFrame]:
    """The metrics in replay order (known time, asset, name, observed time): as columns of
    Python values (what the instants' ``Metric`` events are built from) and as one table
    (what a policy's ``prepare`` reads), its asset and name categorical: a few distinct
    strings over many rows, so readers match them once per distinct value."""
    if metrics is None or metrics.empty:
        empty = pd.DataFrame(
            {
                "known_at": np.empty(0, np.int64),
                "asset": pd.Categorical([]),
                "name": pd.Categorical([]),
                "observed_at": np.empty(0, np.int64),
                "value": np.empty(0, np.float64),
            }
        )
        return ([], [], [], [], []), empty
    frame = metrics.sort_values(["known_at", "asset", "name", "observed_at"], kind="stable")
    table = pd.DataFrame(
        {
            "known_at": frame["known_at"].to_numpy(np.int64),
            "asset": pd.Categorical(frame["asset"].astype(str)),
            "name": pd.Categorical(frame["name"].astype(str)),
            "observed_at": frame["observed_at"].to_numpy(np.int64),
            "value": frame["value"].to_numpy(np.float64),
        }
    )
    columns = (
        table["known_at"].tolist(),
        table["asset"].astype(str).tolist(),
        table["name"].astype(str).tolist(),
        table["observed_at"].tolist(),
        table["value"].tolist(),
    )
    return columns, table
