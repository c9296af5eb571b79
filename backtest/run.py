"""One backtest: a policy, the engine, the simulated venue and a replay, recorded.

The loop is the replay's side of the engine: each instant is stepped, each order of the step is
filled by the :class:`~bot.venues.sim.SimVenue` at the next bar's open (the same fill model as
paper trading), and each fill is booked before the next instant. Policies with a ``prepare``
method get the whole replay first (a Crypto Module vote computes its features and network
outputs for the window in a few batched passes) and then decide exactly as bar by bar.

A policy that then declares where it will not trade (``quiet_instants``: buy & hold after its
purchase, a signal policy between its signals) is not called there: the engine coasts through
each stretch of such instants at once (:meth:`~bot.engine.kernel.Engine.coast`), with the
valuations and kill switch that stepping them would give. Not while observers listen on the
bus (they expect every step's events) or orders are sliced (the slicer follows every bar).
"""

from __future__ import annotations

import gc

import numpy as np

from backtest.recorder import Recorder
from backtest.replay import Progress, ReplayDriver
from backtest.result import RunResult
from bot.engine.execution import Slicer
from bot.engine.kernel import Engine, market_rules
from bot.engine.step import Policy, Stretch
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
    venue = SimVenue(
        cfg.broker,
        cfg.market.quote,
        rules,
        driver.next_open,
        execution=cfg.execution,
        next_bar=driver.next_bar,
        step_ms=driver.step_ms,
    )
    engine = Engine(cfg, policy, rules=rules)
    slicer = Slicer(cfg.execution, driver.step_ms, rules)
    slicing = slicer.active
    recorder = Recorder(engine.account)
    prepare = getattr(policy, "prepare", None)
    if prepare is not None:
        prepare(driver)
    observed = engine.bus.listening  # nobody subscribes during a replay but before it
    quiet = None if slicing or observed else quiet_instants(policy, driver)
    # A replay allocates millions of short-lived tuples (bars, instants, step results) and
    # keeps none of them in cycles: young-generation collections would only cost time.
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 100_000), *thresholds[1:])
    try:
        step, book, reject, bus = engine.step, engine.book, engine.reject, engine.bus
        record_fill, execute = recorder.on_fill, venue.execute
        record_ts, record_equity = recorder.times.append, recorder.equities.append
        for run in driver.runs(progress, quiet):
            if type(run) is Stretch:
                equities = engine.coast(run)
                if equities is not None:
                    recorder.on_coast(run, equities)
                    continue
                run = run.instants()  # declined (see Engine.coast): stepped instead
            for instant in run:
                result = step(instant)
                if instant[3]:  # a decision (not warm-up): its valuation and refusals recorded
                    record_ts(result[0])
                    record_equity(result[1])
                    if result[6] is not None or result[3]:  # reviewed: refusals and the audit
                        recorder.refusals.extend(result[3])
                        recorder.on_review(result)
                if slicing:
                    slicer.observe(instant, result[2])
                if result[4]:
                    for order in result[4]:
                        parts = slicer.slices(order) if slicing else ((order, 0),)
                        for part, offset in parts:
                            outcome = venue.execute_slice(part, offset) if offset else execute(part)
                            if type(outcome) is OrderFilled:
                                book(outcome)
                                record_fill(outcome)
                            else:
                                reject(outcome)  # type: ignore[arg-type]
                                recorder.on_rejection(outcome)  # type: ignore[arg-type]
                if observed and bus.pending:
                    await bus.drain()
        run = None  # a stretch holds the replay's per-instant plan: freed before the result
    finally:
        gc.set_threshold(*thresholds)
    return recorder.result(
        name,
        timeframe=driver.timeframe,
        quote=cfg.market.quote,
        initial_cash=cfg.broker.initial_cash,
        fees_paid=engine.account.fees_paid,
        closes_at=driver.closes_at,
        impact_paid=venue.impact_paid,
        slippage_paid=venue.slippage_paid,
    )


def quiet_instants(policy: Policy, driver: ReplayDriver) -> np.ndarray | None:
    """The policy's declared quiet instants (``None``: it declares none), checked to hold one
    boolean per instant of the replay."""
    declare = getattr(policy, "quiet_instants", None)
    if declare is None:
        return None
    quiet = declare(driver)
    if quiet is None:
        return None
    quiet = np.asarray(quiet)
    expected = len(driver.instant_times())
    if quiet.dtype != np.bool_ or quiet.shape != (expected,):
        raise ValueError(
            f"policy {policy.name!r}: quiet_instants must be {expected} booleans (one per "
            f"instant of the replay), got dtype {quiet.dtype} and shape {quiet.shape}"
        )
    return quiet
