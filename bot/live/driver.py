"""The live driver: wakes at every bar close on the exchange's clock and runs one trading cycle.

A cycle deciding at close ``ts``:

1. waits until the exchange's clock passes ``ts + grace_s``;
2. takes every coin's closed bars since the last one it has from the kline websocket
   (:mod:`bot.feed.kline_stream`, when ``[live].bar_source = "websocket"``); a coin whose bar
   the stream has not delivered within a moment comes over REST (retried; a bar the exchange
   has not published yet is asked for again for up to ``bar_wait_s``); stores them in
   ``market.db``, and reads the metrics that became known since the last cycle (under the
   :class:`~bot.feed.santiment_live.MetricGate`, so a value written while the cycle reads is
   published at the next one, never lost);
3. builds instants from them with the replay's function (:func:`bot.engine.step.instants`) and
   steps the engine through each, so the policy, the risk gate and the planner run exactly as in
   a backtest; the decision (target weights, refusals) is journalled;
4. hands the step's orders to the executor, which journals, sends and settles them;
5. closes the cycle's row in ``state.db`` with the equity and the latency.

Bars older than ``ts`` (after an outage) make warm-up instants: the modules' state follows every
bar, but decisions are taken at the current close alone. A coin whose bar at ``ts`` is missing
is left to the risk gate's stale-data rule.

Each coin's cursor (the open time of the next bar to take) only moves forward, whichever path
delivered a bar: a bar the stream delivers after REST stood in for it is dropped, so every close
is decided once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.engine.kernel import Engine
from bot.engine.risk import is_routine
from bot.engine.step import StepResult, instants
from bot.events import Bar, GrossExposure, Metric, ModuleDecision, VariantWeights
from bot.feed.exchange import describe_error, spot_stream_url
from bot.feed.kline_stream import KlineStream, combined_stream_url, connect_options
from bot.feed.live import fetch_closed_bars
from bot.feed.santiment_live import MetricGate
from bot.live.clock import ExchangeTimeClock
from bot.live.executor import Executor, LiveTradingError
from bot.store import MarketStore, MetricStore
from bot.timeframes import CandleGrid, ms_to_iso
from config.schema import AppConfig

log = logging.getLogger(__name__)

STREAM_WAIT_S = 2.0
"""How long (on the exchange's clock) a cycle waits for a bar the connected stream has not
delivered yet before asking REST."""


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    ts: int
    bars: int
    metrics: int
    orders: int
    refusals: int
    equity: float
    latency_ms: float
    error: str | None = None


class LiveDriver:
    """Feeds the engine from the exchange at every close and runs the cycle's orders."""

    def __init__(
        self,
        cfg: AppConfig,
        executor: Executor,
        exchange: Any,
        clock: ExchangeTimeClock,
        market: MarketStore,
        metrics: MetricStore | None = None,
        *,
        bar_wait_s: float | None = None,
        coins: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine: Engine | None = None
        self.executor = executor
        self.exchange = exchange
        self.clock = clock
        self.market = market
        self.metrics = metrics
        self.grid = CandleGrid(cfg.market.timeframe)
        self.step = self.grid.step
        self.bar_wait_s = (
            bar_wait_s if bar_wait_s is not None else min(30.0, self.step / 4000 / clock.speed)
        )
        self._coins = coins or (lambda: cfg.market.coins)
        self._next_open: dict[str, int] = {}
        self.gate = MetricGate()
        """Orders live metric writes against their publication (shared with the refresher)."""
        self.cycles = 0
        self.last: StepResult | None = None
        """The last decision's step."""
        self.stream: KlineStream | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._inbox: dict[str, deque[Bar]] = {}
        self._arrived = asyncio.Event()
        self.last_bars: dict[str, tuple[int, str]] = {}
        """Symbol -> (close of its newest bar, where it came from: websocket or REST)."""
        self._stored: list[tuple[str, list[Bar]]] = []
        self.streamed_bars = 0
        """Bars the kline websocket delivered to cycles so far (the rest came over REST)."""
        self.after_cycle: Callable[[int], Awaitable[None]] | None = None
        """Awaited after every cycle with its close (freshness report, metric refresh)."""

    @property
    def known_until(self) -> int:
        """Metrics known up to this exchange time are in the stores already read (the first
        cycle reads those known after it)."""
        if self.gate.published_until is None:
            raise RuntimeError("LiveDriver.catch_up must run first")
        return self.gate.published_until

    def attach(self, engine: Engine) -> None:
        """Feed ``engine`` (built once the history is stored and the policy warmed up); its
        fills and refusals come back from the executor."""
        self.engine = engine
        self.executor.on_fill = engine.book
        self.executor.on_reject = engine.reject

    # -- history ----------------------------------------------------------------------------------

    async def catch_up(self, since_ms: int) -> int:
        """Store every closed bar from ``since_ms`` (or the last stored one) up to now.

        Run once at start, before the policy is warmed up from the stores (and before
        :meth:`attach`); returns the bars written. Later bars come from the cycles.
        """
        now = self.clock.now_ms()
        written = 0
        tf, name = self.cfg.market.timeframe, self.cfg.market.exchange
        for coin in self._coins():
            symbol = self.cfg.market.symbol(coin)
            last = await self.market.last_open_time(name, symbol, tf)
            start = since_ms if last is None or last < since_ms else last + self.step
            bars = await self._fetch(symbol, start, now)
            written += await self._store(symbol, bars)
            last = bars[-1].open_time if bars else last
            self._next_open[symbol] = (last + self.step) if last is not None else start
            if last is not None:
                self.last_bars.setdefault(symbol, (last + self.step, "REST"))
        self.gate.published_until = now
        return written

    # -- the kline stream -------------------------------------------------------------------------

    def start_stream(self, markets: dict[str, Any]) -> bool:
        """Start the kline websocket for every coin (after :meth:`catch_up`), each from its next
        bar; False (REST only, logged) when ``[live].bar_source`` says so or the exchange has
        no stream the daemon speaks (Binance's)."""
        live = self.cfg.live
        if live.bar_source != "websocket":
            return False
        base = spot_stream_url(self.cfg.exchange) if self.cfg.exchange.id == "binance" else None
        if base is None:
            log.warning(
                "%s: no kline websocket the daemon speaks; bars come over REST",
                self.cfg.exchange.id,
            )
            return False
        url = combined_stream_url(base)
        symbols = {}
        for coin in self._coins():
            symbol = self.cfg.market.symbol(coin)
            symbols[symbol] = str(markets[symbol]["id"]) if symbol in markets else symbol
        self.stream = KlineStream(
            url,
            symbols,
            self.cfg.market.timeframe,
            exchange_name=self.cfg.market.exchange,
            backfill=self._backfill,
            on_bar=self._on_stream_bar,
            connect_options=connect_options(self.cfg.exchange, url),
            stall_s=live.stream_stall_s,
            reconnect_base_s=live.stream_reconnect_s,
        )
        for symbol in symbols:
            if symbol in self._next_open:
                self.stream.start_at(symbol, self._next_open[symbol])
        self._stream_task = asyncio.create_task(self.stream.run())
        self._stream_task.add_done_callback(self._stream_ended)
        return True

    async def close(self) -> None:
        """Stop the kline websocket."""
        if self._stream_task is not None:
            self._stream_task.cancel()
            await asyncio.gather(self._stream_task, return_exceptions=True)
            self._stream_task = None

    @property
    def streaming(self) -> bool:
        """Whether the kline websocket runs and is connected."""
        return (
            self.stream is not None
            and self._stream_task is not None
            and not self._stream_task.done()
            and self.stream.connected
        )

    def _stream_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        log.error(
            "the kline websocket stopped (%s); bars come over REST from now on",
            describe_error(error) if error is not None else "ended",
        )

    async def _backfill(self, symbol: str, since_ms: int) -> list[Bar]:
        """The stream's REST backfill: closed bars from ``since_ms`` up to now."""
        return await self._fetch(symbol, since_ms, self.clock.now_ms())

    def _on_stream_bar(self, bar: Bar) -> None:
        self._inbox.setdefault(bar.symbol, deque()).append(bar)
        self._arrived.set()

    def _take_streamed(self, symbol: str, until_close: int) -> list[Bar]:
        """The streamed bars of ``symbol`` that continue its cursor, up to ``until_close``;
        those before the cursor (REST stood in for them) are dropped."""
        inbox = self._inbox.get(symbol)
        if not inbox:
            return []
        taken: list[Bar] = []
        next_open = self._next_open.get(symbol)
        while inbox:
            bar = inbox[0]
            if next_open is not None and bar.open_time < next_open:
                inbox.popleft()  # decided already
                continue
            if bar.ts > until_close or (next_open is not None and bar.open_time > next_open):
                break  # a later close, or a gap REST must fill first
            inbox.popleft()
            taken.append(bar)
            next_open = bar.open_time + self.step
        if taken:
            self._next_open[symbol] = next_open  # type: ignore[assignment]
        return taken

    async def _fetch(self, symbol: str, since_ms: int, until_close_ms: int) -> list[Bar]:
        ex_cfg = self.cfg.exchange
        return await fetch_closed_bars(
            self.exchange,
            exchange_name=self.cfg.market.exchange,
            symbol=symbol,
            timeframe=self.cfg.market.timeframe,
            since_ms=since_ms,
            now_ms=until_close_ms,
            exchange_time_ms=self.clock.now_ms(),
            max_retries=ex_cfg.max_retries,
            base_delay_s=ex_cfg.retry_base_s,
        )

    async def _store(self, symbol: str, bars: list[Bar]) -> int:
        if not bars:
            return 0
        rows = [(b.open_time, b.open, b.high, b.low, b.close, b.volume) for b in bars]
        return await self.market.upsert_candles(
            self.cfg.market.exchange, symbol, self.cfg.market.timeframe, rows
        )

    # -- the loop ---------------------------------------------------------------------------------

    async def run_cycle(self, ts: int) -> CycleReport:
        """One cycle deciding at the close ``ts`` (see the module docstring)."""
        if self.engine is None:
            raise RuntimeError("LiveDriver.attach(engine) must be called before the cycles")
        started = time.perf_counter()
        journal = self.executor.journal
        await journal.start_cycle(ts, self.clock.now_ms())
        self._stored = []
        try:
            report = await self._cycle(ts, started)
        except LiveTradingError:
            await journal.finish_cycle(ts, "failed", self.clock.now_ms(), error="credentials")
            raise
        except Exception as exc:
            error = describe_error(exc)
            log.error("cycle %s failed: %s", ms_to_iso(ts), error, exc_info=True)
            await journal.finish_cycle(ts, "failed", self.clock.now_ms(), error=error)
            report = CycleReport(ts, 0, 0, 0, 0, self.engine.account.equity(), 0.0, error)
        finally:
            await self._store_taken()
        self.cycles += 1
        if self.after_cycle is not None:
            try:
                await self.after_cycle(ts)
            except Exception:  # reporting never stops trading
                log.exception("after-cycle hook failed")
        return report

    async def _store_taken(self) -> None:
        """Write the cycle's new bars to ``market.db`` (after its orders left: nothing in the
        cycle reads them back, and a restart fetches what a crash kept from being stored)."""
        stored, self._stored = self._stored, []
        for symbol, bars in stored:
            await self._store(symbol, bars)

    async def _cycle(self, ts: int, started: float) -> CycleReport:
        assert self.engine is not None
        # Orders of unknown fate from earlier cycles: asked about when due; their coins keep
        # their weight until the exchange's record settles them.
        self.engine.planner.blocked = await self.executor.check_unknown(self.clock.now_ms())
        engine = self.engine
        streamed = self.streamed_bars
        bars = await self._new_bars(ts)
        streamed = self.streamed_bars - streamed
        metrics = await self._new_metrics(ts)
        ordered = sorted(bars, key=lambda b: (b.ts, b.symbol))
        modules: dict[str, str] = {}
        controller: dict[str, dict[str, float]] = {}  # MARS: weights over each coin's variants
        gross: float | None = None  # mars+manager: the gross exposure
        positions: dict[str, float] = {}
        slicer = self.executor.slicer
        for instant in instants(ordered, metrics, decide_from=ts, close_at=ts):
            result = engine.step(instant)
            if slicer is not None:
                slicer.observe(instant, result.target)
            for note in result.notes:
                if isinstance(note, ModuleDecision):
                    modules[note.coin] = note.module_id
                    positions[note.coin] = note.coin_weight
                elif isinstance(note, VariantWeights):
                    controller[note.coin] = {k: round(w, 6) for k, w in note.weights}
                elif isinstance(note, GrossExposure):
                    gross = note.exposure
        self.last = result
        refusals = list(result.refusals)
        # What the policy read, for `live diff`: the account as it decided (marked at this
        # close, before the orders), the latest bars, the metrics received, its modules and
        # their positions (the diagnostics of /modules).
        held = {a: w for a, w in engine.account.weights().items() if w}
        inputs = {
            "weights": held,
            "bars": {c: [b.ts, b.close] for c, b in sorted(engine.account.last_bars.items())},
            "metrics": len(metrics),
            "modules": modules,
            "positions": positions,
        }
        if controller:  # journalled with the decision (state.db decisions.inputs)
            inputs["controller"] = controller
        if gross is not None:
            inputs["gross_exposure"] = gross
        await self.executor.journal.record_decision(result, inputs)
        await self.executor.journal.add_refusals(refusals)
        await engine.bus.drain()
        for refusal in refusals:  # a configured cap at work is information, not a warning
            log.log(
                logging.INFO if is_routine(refusal) else logging.WARNING,
                "guardrail %s on %s: wanted %.4g, allowed %.4g (%s)",
                refusal.rule,
                refusal.asset,
                refusal.wanted,
                refusal.allowed,
                refusal.detail,
            )
        orders = await self.executor.execute_cycle(ts, result.orders, deadline_ms=ts + self.step)
        await engine.bus.drain()
        latency = (time.perf_counter() - started) * 1000
        await self._explain(ts)  # after the orders: off the decision's latency
        account = self.engine.account
        equity = account.equity()
        await self.executor.journal.set_balances(
            {account.quote: account.cash, **account.holdings}, self.clock.now_ms()
        )
        await self.executor.journal.finish_cycle(
            ts, "done", self.clock.now_ms(), equity=equity, latency_ms=latency
        )
        log.info(
            "cycle %s: %d bars (%d from the websocket), %d metrics, %d orders, %d refusals, "
            "equity %.2f, %.0f ms",
            ms_to_iso(ts),
            len(bars),
            streamed,
            len(metrics),
            orders,
            len(refusals),
            equity,
            latency,
        )
        return CycleReport(ts, len(bars), len(metrics), orders, len(refusals), equity, latency)

    async def _explain(self, ts: int) -> None:
        """Journal why the policy decided what it did at ``ts``, when it can say (an optional
        ``explain(ts) -> dict`` on the policy; the Crypto Module vote explains each module's
        decision). A failure is logged and costs only the explanation."""
        assert self.engine is not None
        explain = getattr(self.engine.policy, "explain", None)
        if explain is None:
            return
        try:
            explanation = explain(ts)
        except Exception:
            log.warning("explaining the decision at %s failed", ms_to_iso(ts), exc_info=True)
            return
        if explanation:
            await self.executor.journal.record_explanation(ts, explanation)

    async def _new_bars(self, ts: int) -> list[Bar]:
        """Every coin's closed bars up to the close ``ts``: from the stream (waiting a moment
        for a coin whose previous close it delivered, while it is connected), then over REST
        for what it has not delivered."""
        found: list[Bar] = []
        waiting = {self.cfg.market.symbol(coin): coin for coin in self._coins()}
        if self.stream is not None:
            deadline = time.monotonic() + STREAM_WAIT_S / self.clock.speed
            while True:
                for symbol in list(waiting):
                    streamed = self._take_streamed(symbol, ts)
                    self.streamed_bars += len(streamed)
                    if streamed:
                        self._stored.append((symbol, streamed))
                        self.last_bars[symbol] = (streamed[-1].ts, "websocket")
                        found.extend(streamed)
                    if self._next_open.get(symbol, ts) >= ts:
                        del waiting[symbol]
                # Waiting is worth it only for coins the stream kept up with: the rest go to
                # REST at once (a stream that never delivers must not slow every cycle).
                expected = [
                    s for s in waiting if self.last_bars.get(s) == (ts - self.step, "websocket")
                ]
                left = deadline - time.monotonic()
                if not expected or left <= 0 or not self.streaming:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
        if waiting:
            found += await self._rest_bars(ts, list(waiting.values()))
        return found

    async def _rest_bars(self, ts: int, coins: list[str]) -> list[Bar]:
        """``coins``' closed bars up to ``ts`` over REST, waiting a little for late ones."""
        deadline = time.monotonic() + self.bar_wait_s
        found: list[Bar] = []
        waiting = coins
        while True:
            wanted = {}
            for coin in waiting:
                symbol = self.cfg.market.symbol(coin)
                start = self._next_open.get(symbol, ts - self.step)
                if start < ts:  # else it already has the bar closing at ts
                    wanted[coin] = (symbol, start)
            # One request per coin, all in flight together (ccxt throttles if configured to).
            answers = await asyncio.gather(
                *(self._fetch(symbol, start, ts) for symbol, start in wanted.values())
            )
            missing = []
            for (coin, (symbol, _)), bars in zip(wanted.items(), answers, strict=True):
                next_open = self._next_open.get(symbol)
                if next_open is not None:  # the stream may have delivered some meanwhile
                    bars = [b for b in bars if b.open_time >= next_open]
                if bars:
                    self._stored.append((symbol, bars))
                    self._next_open[symbol] = bars[-1].open_time + self.step
                    self.last_bars[symbol] = (bars[-1].ts, "REST")
                    found.extend(bars)
                if self._next_open.get(symbol, ts - self.step) < ts:
                    missing.append(coin)
            if not missing or time.monotonic() >= deadline:
                if missing:
                    log.warning(
                        "no bar closing at %s yet for %s; the stale-data rule decides",
                        ms_to_iso(ts),
                        ", ".join(missing),
                    )
                return found
            waiting = missing
            await asyncio.sleep(min(1.0, self.bar_wait_s / 10))

    async def _new_metrics(self, ts: int) -> list[Metric]:
        """Metrics that became known in (last cycle, ts], in publish order."""
        if self.metrics is None:
            return []
        found: list[Metric] = []
        async with self.gate.lock:
            since = self.gate.published_until
            if since is not None and since >= ts:
                return []
            start = None if since is None else since + 1
            async for metric in self.metrics.iter_metrics(start=start, end=ts + 1):
                found.append(metric)
            self.gate.published_until = ts
        return found
