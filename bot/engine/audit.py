"""The guardrail audit of one close: which assets the guardrails moved, from what to what, why.

One definition for every reader of the audit trail: the backtest recorder (``RunResult.audit``)
and the live daemon's ``/audit`` (read back from ``state.db``'s ``decisions.allowed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

EPSILON = 1e-9
"""Weights closer than this are the same weight."""
REST = "rest of the weights"
"""The reason given for an asset no rule named (it took up what the capped ones left)."""


class AuditRow(NamedTuple):
    """An asset whose allowed weight differs from the wanted one at a close (``allowed`` is NaN
    when nothing was allowed: the kill switch held) and the rules that changed it."""

    asset: str
    wanted: float
    allowed: float
    rules: str


def audit_rows(
    wanted: Mapping[str, float],
    allowed: Mapping[str, float] | None,
    refusals: Iterable[tuple[str, str]],
) -> list[AuditRow]:
    """The assets the guardrails changed at one close, sorted by asset.

    ``wanted``: the policy's weights; ``allowed``: the weights the guardrails allowed (``None``:
    nothing was planned, the kill switch held); ``refusals``: ``(rule, asset)`` of every refusal
    of the close (asset ``"*"``: the whole portfolio).
    """
    rules: dict[str, list[str]] = {}
    ordered: list[str] = []
    for rule, asset in refusals:
        rules.setdefault(asset, []).append(rule)
        ordered.append(rule)
    if allowed is None:
        if not ordered:
            return []
        every = ", ".join(dict.fromkeys(ordered))
        return [AuditRow(asset, w, math.nan, every) for asset, w in wanted.items()]
    rows = []
    for asset in sorted(set(wanted) | set(allowed)):
        w, a = wanted.get(asset, 0.0), allowed.get(asset, 0.0)
        if abs(w - a) > EPSILON:
            why = ", ".join(dict.fromkeys(rules.get(asset, []) + rules.get("*", [])))
            rows.append(AuditRow(asset, w, a, why or REST))
    return rows
