"""Warming a policy up on stored history before the daemon's first decision.

A policy's state (indicator windows, a trend filter's closes, a controller's regime features)
must be where a replay of the same history would have left it, or live decisions differ from
backtested ones. :func:`warm_up_policy` feeds the stored bars and the metrics known by the start
as warm-up instants (``decide=False``, on a scratch account), built by the same function as
every other instant (:func:`bot.engine.step.instants`). The Crypto Module vote warms its modules
itself (``strategies.live.build_vote``), so the daemon calls this for other policies.
"""

from __future__ import annotations

from bot.engine.account import Account
from bot.engine.step import DecisionContext, Policy, instants
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
    account = Account(cfg.market.quote, 0.0)
    count = 0
    for instant in instants(bars, known, decide_from=until_ms + 1):
        policy.decide(DecisionContext(instant, account))
        count += 1
    return count
