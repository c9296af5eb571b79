"""What the operator reads about a running daemon's decisions, from ``state.db``.

Pure functions over the journal's ``decisions`` rows (see
:meth:`bot.store.journal.Journal.decisions`), used by :class:`bot.live.control.DaemonControls`:
the guardrail audit of the latest closes (``/audit``), and each Crypto Module's behaviour over
its latest decisions (``/modules``): how often it flips between cash and its coin and how much
of the time it holds the coin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bot.engine.audit import EPSILON, audit_rows
from bot.timeframes import ms_to_iso

AUDIT_SCAN = 500
"""How many of the latest decisions ``/audit`` looks through for guardrail changes."""
DIAGNOSTIC_DECISIONS = 200
"""How many of the latest decisions a module's diagnostics are measured over."""


def _weights(pairs: Sequence[Sequence[Any]] | None) -> dict[str, float] | None:
    return None if pairs is None else {str(a): float(w) for a, w in pairs}


def close_audit(decision: Mapping[str, Any]) -> dict[str, Any] | None:
    """The guardrail audit of one journalled decision: ``ts`` (ISO), ``source``, ``changes``
    (``asset``, ``wanted``, ``allowed`` (None: nothing allowed, the kill switch held),
    ``rules``), ``trims`` (``coin``, ``side``, ``wanted``, ``planned``, ``reason``) and
    ``orders`` (how many were planned); ``None`` when the guardrails changed nothing."""
    wanted = _weights(decision.get("target")) or {}
    allowed = _weights(decision.get("allowed"))
    refusals = [(str(r[0]), str(r[1])) for r in decision.get("refusals") or ()]
    changes = [
        {
            "asset": row.asset,
            "wanted": row.wanted,
            "allowed": None if math.isnan(row.allowed) else row.allowed,
            "rules": row.rules,
        }
        for row in audit_rows(wanted, allowed, refusals)
    ]
    trims = [
        {"coin": t[0], "side": t[1], "wanted": t[2], "planned": t[3], "reason": t[4]}
        for t in decision.get("trims") or ()
    ]
    if not changes and not trims:
        return None
    return {
        "ts": ms_to_iso(int(decision["ts"])),
        "source": decision.get("source"),
        "changes": changes,
        "trims": trims,
        "orders": len(decision.get("orders") or ()),
    }


def latest_audit(decisions: Sequence[Mapping[str, Any]], closes: int) -> dict[str, Any]:
    """The ``closes`` latest closes (oldest first) among ``decisions`` (oldest first) at which
    the guardrails changed a weight or trimmed an order, with how many decisions were looked
    at (``scanned``) and since when (``since``, ISO or None)."""
    found: list[dict[str, Any]] = []
    for decision in reversed(decisions):
        if len(found) >= closes:
            break
        audit = close_audit(decision)
        if audit is not None:
            found.append(audit)
    return {
        "closes": found[::-1],
        "scanned": len(decisions),
        "since": ms_to_iso(int(decisions[0]["ts"])) if decisions else None,
    }


def module_diagnostics(
    decisions: Sequence[Mapping[str, Any]], coin: str, model_id: str | None
) -> dict[str, Any]:
    """How ``coin``'s module (``model_id``; any version when None) behaved over ``decisions``
    (oldest first) that journalled its position: ``decisions`` counted, ``in_coin`` (share of
    them holding the coin), ``flip_rate`` (share of consecutive decisions that went from cash
    to the coin or back) and ``last_flip`` (ISO time, or None). ``decisions`` is 0 (and the
    rest None) before the module's first journalled decision."""
    held: list[bool] = []
    times: list[int] = []
    for decision in decisions:
        inputs = decision.get("inputs") or {}
        positions = inputs.get("positions") or {}
        if coin not in positions:
            continue
        if model_id is not None and (inputs.get("modules") or {}).get(coin) != model_id:
            continue
        held.append(float(positions[coin]) > EPSILON)
        times.append(int(decision["ts"]))
    if not held:
        return {"decisions": 0, "in_coin": None, "flip_rate": None, "last_flip": None}
    flips = [i for i in range(1, len(held)) if held[i] != held[i - 1]]
    return {
        "decisions": len(held),
        "in_coin": sum(held) / len(held),
        "flip_rate": len(flips) / (len(held) - 1) if len(held) > 1 else 0.0,
        "last_flip": ms_to_iso(times[flips[-1]]) if flips else None,
    }


def readiness(
    warm: bool, last_close_ms: int | None, now_ms: int, bar_ms: int, *, stale_bars: int = 2
) -> str:
    """``ready``, ``warming up`` (its window or its on-chain features are not full yet) or
    ``stale: ...`` (no bar of its coin for more than ``stale_bars`` bars, by the daemon's clock)."""
    if last_close_ms is None:
        return "waiting for its first bar"
    behind = (now_ms - last_close_ms) // bar_ms
    if behind > stale_bars:
        return f"stale: last bar closed {ms_to_iso(last_close_ms)}, {behind} bars ago"
    return "ready" if warm else "warming up"
