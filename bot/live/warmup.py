"""Warming a policy up on stored history before the daemon's first decision.

A policy's state (indicator windows, a trend filter's closes, a controller's regime features)
must be where a replay of the same history would have left it, or live decisions differ from
backtested ones. :func:`warm_up_policy` feeds the stored bars and the metrics known by the start
as warm-up instants (``decide=False``, on a scratch account), built by the same function as
every other instant (:func:`bot.engine.step.instants`). The Crypto Module vote warms its modules
itself (``strategies.live.build_vote``), so the daemon calls this for other policies. A policy
with ``prepare`` (the MARS policies) computes its modules' outputs for the whole warm-up in
batched passes first, as a backtest does, instead of one network call per bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bot.engine.account import Account
from bot.engine.step import DecisionContext, Instant, Policy, instants
from bot.events import Bar, Metric
from bot.store import MarketStore, MetricStore
from bot.timeframes import timeframe_ms
from config.schema import AppConfig


async def history_instants_inputs(
    cfg: AppConfig,
    market: MarketStore,
    metrics: MetricStore | None,
    since_ms: int,
    until_ms: int,
) -> tuple[list[Bar], list[Metric]]:
    """Stored bars of every coin closing in ``(since_ms, until_ms]`` (close order) and every
    metric known by ``until_ms``."""
    step = timeframe_ms(cfg.market.timeframe)
    symbols = [cfg.market.symbol(c) for c in cfg.market.coins]
    bars = [
        b
        async for b in market.iter_bars(
            cfg.market.exchange,
            symbols,
            cfg.market.timeframe,
            start=since_ms - step + 1,
            end=until_ms - step + 1,
        )
    ]
    known = [] if metrics is None else [m async for m in metrics.iter_metrics(end=until_ms + 1)]
    return bars, known


async def warm_up_policy(
    policy: Policy,
    cfg: AppConfig,
    market: MarketStore,
    metrics: MetricStore | None,
    since_ms: int,
    until_ms: int,
) -> int:
    """Step ``policy`` through the stored history as warm-up instants; returns how many."""
    bars, known = await history_instants_inputs(cfg, market, metrics, since_ms, until_ms)
    return warm_up_on(
        policy,
        bars,
        known,
        decide_from=until_ms + 1,
        timeframe=cfg.market.timeframe,
        quote=cfg.market.quote,
    )


def warm_up_on(
    policy: Policy,
    bars: Sequence[Bar],
    known: Sequence[Metric],
    *,
    decide_from: int,
    timeframe: str,
    quote: str,
) -> int:
    """Step ``policy`` through the warm-up instants of ``bars`` and ``known`` (on a scratch
    account); returns how many. A policy with ``prepare`` (the MARS policies) first computes
    its modules' outputs for all of them in batched passes, from the instants themselves (the
    same bars and metrics in the same order), and leaves that plan at the first live bar."""
    steps = list(instants(bars, known, decide_from=decide_from))
    prepare = getattr(policy, "prepare", None)
    if prepare is not None:
        prepare(InstantsHistory(steps, timeframe))
    account = Account(quote, 0.0)
    for instant in steps:
        policy.decide(DecisionContext(instant, account))
    return len(steps)


class InstantsHistory:
    """Instants seen as a replay, for a policy's ``prepare``: the timeframe, each symbol's bars
    and every metric, in the order the instants carry them."""

    def __init__(self, steps: Sequence[Instant], timeframe: str) -> None:
        self.timeframe = timeframe
        self._steps = steps

    def replayed_bars(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """Open times ``(T,)`` and OHLCV rows ``(T, 5)`` of the ``symbol`` bars at the
        timeframe."""
        mine = [
            b
            for step in self._steps
            for b in step.bars
            if b.symbol == symbol and b.timeframe == self.timeframe
        ]
        open_time = np.array([b.open_time for b in mine], dtype=np.int64)
        ohlcv = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in mine], np.float64)
        return open_time, ohlcv.reshape(-1, 5)

    def replayed_metrics(self) -> pd.DataFrame:
        """Every metric: ``known_at`` (the ``Metric``'s ``ts``), ``asset``, ``name``,
        ``observed_at``, ``value``."""
        rows = [
            (m.ts, m.asset, m.name, m.observed_at, m.value)
            for step in self._steps
            for m in step.metrics
        ]
        return pd.DataFrame(rows, columns=["known_at", "asset", "name", "observed_at", "value"])
