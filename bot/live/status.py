"""``cryptorlpm live status``: what ``state.db`` says, readable while the daemon runs (or not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.store.journal import Journal


async def read_status(path: Path, *, orders: int = 10, refusals: int = 10) -> dict[str, Any]:
    """Balances, last cycle, last error, pause/kill-switch state, latest orders and refusals.

    Raises ``FileNotFoundError`` naming the file when there is no state yet.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no state.db yet (has `cryptorlpm live` run here?)")
    journal = await Journal.open(path)
    try:
        cycles = await journal.cycles()
        failed = [c for c in cycles if c["status"] == "failed"]
        risk = await journal.get("risk") or {}
        done = [c for c in cycles if c["status"] == "done" and c.get("latency_ms") is not None]
        return {
            "state_db": str(path),
            "balances": await journal.balances(),
            "cycles": len(cycles),
            "last_cycle": cycles[-1] if cycles else None,
            "last_error": failed[-1] if failed else None,
            "paused": bool(await journal.get("paused", False)),
            "halted": risk.get("halted") if isinstance(risk, dict) else None,
            "median_latency_ms": _median([c["latency_ms"] for c in done]),
            "orders": [o.__dict__ for o in await journal.orders(limit=orders)],
            "refusals": await journal.refusals(limit=refusals),
            "exchange": await journal.get("exchange_guard"),
            "trading_halt": await journal.get("trading_halt"),
            "unknown_orders": [o.__dict__ for o in await journal.unknown_orders()],
            "trading": await trading_lines(journal),
        }
    finally:
        await journal.close()


async def trading_lines(journal: Journal) -> list[str]:
    """What keeps the daemon from trading, one line each: a ban, refused credentials, orders
    of unknown fate (empty when nothing does)."""
    from bot.timeframes import ms_to_iso

    lines = []
    halt = await journal.get("trading_halt")
    if halt:
        lines.append(f"TRADING HALTED: {halt}")
    guard = await journal.get("exchange_guard") or {}
    ban = guard.get("banned") if isinstance(guard, dict) else None
    if ban:
        lines.append(
            f"EXCHANGE BAN: {ban['detail']}; no request until {ms_to_iso(int(ban['until_ms']))}"
        )
    for order in await journal.unknown_orders():
        lines.append(
            f"ORDER OF UNKNOWN FATE: {order.client_order_id} {order.side} {order.amount:.8g} "
            f"{order.symbol} ({order.reason}); {order.coin} is blocked, next check "
            f"{ms_to_iso(order.next_check_ms) if order.next_check_ms else 'at the next cycle'}"
        )
    return lines


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
