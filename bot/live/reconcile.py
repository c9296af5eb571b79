"""Reconciliation: make the journal and the account agree with the exchange before trading.

Run at every start and every ``reconcile_every`` cycles. At a start it also finishes what a
crash interrupted:

1. **Orders of unknown fate** (``sending``, ``open``, ``partially_filled``) are looked up by
   client id. Known to the exchange: its state is journalled (an open order of a finished cycle
   is cancelled). Unknown and ``sending``: the request never arrived, so the order goes back to
   ``planned``; it was not sent, and sending it later is not a duplicate.
2. **Balances** are the exchange's (paper: derived from the journal) and replace the account's;
   every journalled fill is then marked booked, since the balances already contain it.
3. **An interrupted cycle** whose close is at most ``resume_within_bars`` bars old is resumed
   with the plan journalled before the crash (its ``planned`` orders are sent), or, when it died
   before its plan was journalled, handed back to the daemon to decide again (``redo``); an
   older one is abandoned, so the next cycle re-plans from the real balances.
4. **Open orders on the exchange that the journal lacks**: ours (client id prefix ``rlpm-``)
   are cancelled, anyone else's are left alone with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import ccxt

from bot.engine.account import Account, coin_of
from bot.feed.exchange import describe_error
from bot.feed.retry import call_with_retries
from bot.live.executor import CcxtExecutor, LiveExecutor, LiveTradingError, paper_balances

log = logging.getLogger(__name__)

CLIENT_ID_PREFIX = "rlpm-"


@dataclass
class Reconciliation:
    """What a reconciliation found and did."""

    resolved: list[str] = field(default_factory=list)
    """Orders whose fate was learnt from the exchange."""
    unsent: list[str] = field(default_factory=list)
    """Orders that never reached the exchange (back to planned)."""
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
    executor: LiveExecutor,
    account: Account,
    coins: tuple[str, ...],
    *,
    now_ms: int,
    step_ms: int,
    resume_within_bars: int,
    initial_cash: float,
    at_start: bool,
) -> Reconciliation:
    """Bring journal and account in line with the exchange (see the module docstring)."""
    journal = executor.journal
    report = Reconciliation()
    unfinished = await journal.unfinished_cycles() if at_start else {}
    for row in await journal.open_orders():
        if row.status == "planned":
            continue
        if isinstance(executor, CcxtExecutor):
            order = row.submit_order()
            outcome = await executor.lookup(order, quiet=True)
            if outcome is None:
                if row.status == "sending":
                    await journal.record(row.client_order_id, now_ms, status="planned")
                    report.unsent.append(row.client_order_id)
                continue
            if not outcome.settled and row.cycle_ts not in unfinished:
                outcome = await executor.cancel(order, outcome) or outcome
                report.cancelled.append(row.client_order_id)
            await executor.apply(row, outcome)
            report.resolved.append(row.client_order_id)
        elif row.status == "sending":  # paper: the fill is journalled with its status at once
            await journal.record(row.client_order_id, now_ms, status="planned")
            report.unsent.append(row.client_order_id)
    await _sync_balances(executor, account, coins, initial_cash, now_ms, report)
    await journal.mark_all_booked()
    if at_start:
        for ts, status in unfinished.items():
            recent = now_ms - ts <= resume_within_bars * step_ms
            if status == "running" and recent and ts == max(unfinished):
                report.redo.append(ts)  # died before planning: the daemon decides again
                continue
            window = resume_within_bars if status == "planned" else -1  # no plan: nothing to resume
            await _finish_interrupted(executor, ts, now_ms, step_ms, window, report)
        if isinstance(executor, CcxtExecutor):
            await _cancel_strays(executor, coins, account.quote, report)
    return report


async def _sync_balances(
    executor: LiveExecutor,
    account: Account,
    coins: tuple[str, ...],
    initial_cash: float,
    now_ms: int,
    report: Reconciliation,
) -> None:
    quote = account.quote
    if isinstance(executor, CcxtExecutor):
        ex = executor.exchange
        try:
            balance: dict[str, Any] = await call_with_retries(
                ex.fetch_balance,
                max_retries=executor.max_retries,
                base_delay_s=executor.base_delay_s,
            )
        except (ccxt.AuthenticationError, ccxt.PermissionDenied) as exc:
            raise LiveTradingError(
                f"the exchange refused the API key when reading balances: {describe_error(exc)}; "
                "check CRYPTORLPM_EXCHANGE_API_KEY / CRYPTORLPM_EXCHANGE_SECRET (testnet keys for "
                "the testnet)"
            ) from None
        totals = {a: float(v or 0.0) for a, v in (balance.get("total") or {}).items()}
    else:
        totals = paper_balances(initial_cash, quote, await executor.journal.orders())
    wanted = (quote, *coins)
    before = {quote: account.cash, **account.holdings}
    for asset in wanted:
        drift = totals.get(asset, 0.0) - before.get(asset, 0.0)
        if abs(drift) > 1e-9 * max(1.0, abs(totals.get(asset, 0.0))):
            report.balance_drift[asset] = drift
    account.cash = totals.get(quote, 0.0)
    account.holdings = {c: totals[c] for c in coins if totals.get(c, 0.0) > 0}
    await executor.journal.set_balances({a: totals.get(a, 0.0) for a in wanted}, now_ms)


async def _finish_interrupted(
    executor: LiveExecutor,
    ts: int,
    now_ms: int,
    step_ms: int,
    resume_within_bars: int,
    report: Reconciliation,
) -> None:
    journal = executor.journal
    plan = await journal.cycle_orders(ts)
    if now_ms - ts <= resume_within_bars * step_ms:
        log.warning(
            "resuming the cycle of %d interrupted by a restart (%d orders not sent yet)",
            ts,
            sum(1 for o in plan if o.status == "planned"),
        )
        await executor.send_planned(plan)
        await journal.finish_cycle(ts, "done", now_ms, error="resumed after a restart")
        report.resumed.append(ts)
        return
    for row in plan:
        if row.status == "planned":
            await journal.record(
                row.client_order_id, now_ms, status="abandoned", reason="cycle too old to resume"
            )
    await journal.finish_cycle(ts, "abandoned", now_ms, error="interrupted; too old to resume")
    report.abandoned.append(ts)
    log.warning("abandoned the cycle of %d interrupted by a restart: too old to resume", ts)


async def _cancel_strays(
    executor: CcxtExecutor, coins: tuple[str, ...], quote: str, report: Reconciliation
) -> None:
    journal = executor.journal
    for coin in coins:
        symbol = f"{coin}/{quote}"
        try:
            open_orders = await executor.exchange.fetch_open_orders(symbol)
        except Exception as exc:
            log.warning("cannot list open %s orders: %s", symbol, describe_error(exc))
            continue
        for order in open_orders:
            cid = str(order.get("clientOrderId") or "")
            if await journal.order(cid) is not None:
                continue
            if cid.startswith(CLIENT_ID_PREFIX):
                try:
                    await executor.exchange.cancel_order(order.get("id"), symbol)
                    report.cancelled.append(cid)
                    log.warning("cancelled open order %s that state.db does not know", cid)
                except Exception as exc:
                    log.error("cannot cancel stray order %s: %s", cid, describe_error(exc))
            else:
                log.warning(
                    "open %s order %s was not placed by this daemon; left alone",
                    coin_of(symbol),
                    cid or order.get("id"),
                )
