"""One backtest: a policy, the engine, the simulated venue and a replay, recorded.

The loop is the replay's side of the engine: each instant is stepped, each order of the step is
filled by the :class:`~bot.venues.sim.SimVenue` at the next bar's open (the same fill model as
paper trading), and each fill is booked before the next instant. Policies with a ``prepare``
method get the whole replay first (a Crypto Module vote computes its features and network
outputs for the window in a few batched passes) and then decide exactly as bar by bar.
"""

from __future__ import annotations

from backtest.recorder import Recorder
from backtest.replay import Progress, ReplayDriver
from backtest.result import RunResult
from bot.engine.kernel import Engine, market_rules
from bot.engine.step import Policy
from bot.events import OrderFilled
from bot.venues.sim import SimVenue
from config.schema import AppConfig


async def run_backtest(
    cfg: AppConfig,
    policy: Policy,
    driver: ReplayDriver,
    *,
    name: str,
    progress: Progress | None = None,
) -> RunResult:
    """Replay ``driver`` through a fresh engine deciding with ``policy``; return the record."""
    rules = market_rules(cfg)
    venue = SimVenue(cfg.broker, cfg.market.quote, rules, driver.next_open)
    engine = Engine(cfg, policy, rules=rules)
    recorder = Recorder(engine.account)
    prepare = getattr(policy, "prepare", None)
    if prepare is not None:
        prepare(driver)
    step, book, reject, bus = engine.step, engine.book, engine.reject, engine.bus
    record, record_fill = recorder.on_step, recorder.on_fill
    for instant in driver.instants(progress):
        result = step(instant)
        if instant.decide:
            record(result)
        for order in result.orders:
            outcome = venue.execute(order)
            if type(outcome) is OrderFilled:
                book(outcome)
                record_fill(outcome)
            else:
                reject(outcome)  # type: ignore[arg-type]
                recorder.on_rejection(outcome)  # type: ignore[arg-type]
        if bus.pending:
            await bus.drain()
    return recorder.result(
        name,
        timeframe=driver.timeframe,
        quote=cfg.market.quote,
        initial_cash=cfg.broker.initial_cash,
        fees_paid=engine.account.fees_paid,
        closes_at=driver.closes_at,
    )
