"""Reconciliation: make the journal and the account agree with the exchange before trading.

Run at every start, every ``reconcile_every`` cycles, and before trading again after a ban. At
a start it also finishes what a crash interrupted:

1. **Orders that may be on the exchange** (``sending``, ``unknown``, ``open``,
   ``partially_filled``) are settled from the exchange's record
   (:meth:`~bot.live.executor.Executor.resolve`): one it shows is journalled and booked (an
   open order of a finished cycle is cancelled); one it provably never received goes back to
   ``planned`` when its cycle is resumed, else is abandoned; one it cannot account for stays
   ``unknown``, is never resent, and blocks its coin.
2. **Balances** are the venue's (the exchange's, or paper's, derived from the journal) and
   replace the account's; every journalled fill is then marked booked, since the balances
   already contain it.
3. **An interrupted cycle** whose close is at most ``resume_within_bars`` bars old is resumed
   with the plan journalled before the crash (its ``planned`` orders are sent, its unknown ones
   settled), or, when it died before its plan was journalled, handed back to the daemon to
   decide again (``redo``); an older one is abandoned, so the next cycle re-plans from the real
   balances.
4. **Open orders on the exchange that the journal lacks**: ours (client id prefix ``rlpm-``)
   are cancelled, anyone else's are left alone with a warning.

A refused API key surfaces as :class:`~bot.live.executor.LiveTradingError`, never as anything
else: the daemon halts trading on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bot.engine.account import Account
from bot.live.executor import ABSENT, SETTLED, UNKNOWN, Executor

log = logging.getLogger(__name__)


@dataclass
class Reconciliation:
    """What a reconciliation found and did."""

    resolved: list[str] = field(default_factory=list)
    """Orders whose fate was learnt from the exchange."""
    unsent: list[str] = field(default_factory=list)
    """Orders the exchange never received (back to planned, or abandoned)."""
    unknown: list[str] = field(default_factory=list)
    """Orders whose fate the exchange's record does not settle yet (never resent)."""
    resumed: list[int] = field(default_factory=list)
    """Interrupted cycles finished with their journalled plan."""
    redo: list[int] = field(default_factory=list)
    """Interrupted cycles that had not planned yet and are recent enough to decide again."""
    abandoned: list[int] = field(default_factory=list)
    """Interrupted cycles too old to resume."""
    cancelled: list[str] = field(default_factory=list)
    """Open orders cancelled (stray ones of ours, or open orders of finished cycles)."""
    balance_drift: dict[str, float] = field(default_factory=dict)
    """Asset -> exchange minus account, where they differed by more than dust."""


async def reconcile(
    executor: Executor,
    account: Account,
    coins: tuple[str, ...],
    *,
    now_ms: int,
    step_ms: int,
    resume_within_bars: int,
    at_start: bool,
) -> Reconciliation:
    """Bring journal and account in line with the exchange (see the module docstring)."""
    journal = executor.journal
    report = Reconciliation()
    unfinished = await journal.unfinished_cycles() if at_start else {}
    resumable = _resumable(unfinished, now_ms, step_ms, resume_within_bars)
    for row in await journal.unsettled_orders():
        found = await executor.resolve(row, now_ms)
        if found == SETTLED:
            settled = await journal.order(row.client_order_id)
            still_open = settled is not None and settled.status in ("open", "partially_filled")
            if still_open and row.cycle_ts not in unfinished:
                assert settled is not None
                last = await executor.venue.cancel(row.submit_order())
                await executor.apply(settled, last)
                report.cancelled.append(row.client_order_id)
            report.resolved.append(row.client_order_id)
        elif found == ABSENT:
            again = row.cycle_ts == resumable
            await journal.record(
                row.client_order_id,
                now_ms,
                status="planned" if again else "abandoned",
                reason="the exchange never received it" + ("" if again else "; its cycle is over"),
            )
            report.unsent.append(row.client_order_id)
        else:
            assert found == UNKNOWN
            report.unknown.append(row.client_order_id)
    await _sync_balances(executor, account, coins, now_ms, report)
    await journal.mark_all_booked()
    if at_start:
        for ts, status in unfinished.items():
            if ts == resumable and status == "running":
                report.redo.append(ts)  # died before planning: the daemon decides again
            elif ts == resumable:
                await _resume(executor, ts, deadline_ms=ts + step_ms, report=report)
            else:
                await _abandon(executor, ts, now_ms, report)
        report.cancelled += await executor.cancel_strays(coins, account.quote)
    return report


def _resumable(
    unfinished: dict[int, str], now_ms: int, step_ms: int, resume_within_bars: int
) -> int | None:
    """The interrupted cycle to finish: the latest, if recent enough (a cycle that never
    planned can only be decided again while it is the current one)."""
    if not unfinished:
        return None
    ts = max(unfinished)
    window = resume_within_bars if unfinished[ts] == "planned" else 0
    if unfinished[ts] == "running":
        window = max(window, resume_within_bars)
    return ts if now_ms - ts <= window * step_ms else None


async def _sync_balances(
    executor: Executor,
    account: Account,
    coins: tuple[str, ...],
    now_ms: int,
    report: Reconciliation,
) -> None:
    quote = account.quote
    totals = await executor.venue.balances(coins, quote)
    wanted = (quote, *coins)
    before = {quote: account.cash, **account.holdings}
    for asset in wanted:
        drift = totals.get(asset, 0.0) - before.get(asset, 0.0)
        if abs(drift) > 1e-9 * max(1.0, abs(totals.get(asset, 0.0))):
            report.balance_drift[asset] = drift
    account.cash = totals.get(quote, 0.0)
    account.holdings = {c: totals[c] for c in coins if totals.get(c, 0.0) > 0}
    await executor.journal.set_balances({a: totals.get(a, 0.0) for a in wanted}, now_ms)


async def _resume(executor: Executor, ts: int, *, deadline_ms: int, report: Reconciliation) -> None:
    journal = executor.journal
    plan = await journal.cycle_orders(ts)
    log.warning(
        "resuming the cycle of %d interrupted by a restart (%d orders not sent yet)",
        ts,
        sum(1 for o in plan if o.status == "planned"),
    )
    await executor.run_plan(ts, deadline_ms=deadline_ms)
    await journal.finish_cycle(ts, "done", executor.now_ms(), error="resumed after a restart")
    report.resumed.append(ts)


async def _abandon(executor: Executor, ts: int, now_ms: int, report: Reconciliation) -> None:
    journal = executor.journal
    await executor.abandon_unsent(ts, "cycle too old to resume")
    await journal.finish_cycle(ts, "abandoned", now_ms, error="interrupted; too old to resume")
    report.abandoned.append(ts)
    log.warning("abandoned the cycle of %d interrupted by a restart: too old to resume", ts)
