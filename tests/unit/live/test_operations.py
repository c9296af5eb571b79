"""What /audit and /modules read back from state.db: the guardrail audit, module diagnostics."""

from __future__ import annotations

import math
from pathlib import Path

from bot.engine.audit import REST, AuditRow, audit_rows
from bot.engine.planner import Trim
from bot.engine.step import StepResult
from bot.events import RiskRefusal, TargetWeights
from bot.live.operations import close_audit, latest_audit, module_diagnostics, readiness
from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS, to_ms

T0 = to_ms("2024-03-01T00:00:00")


def test_audit_rows_name_the_rule_of_each_changed_asset_and_the_rest() -> None:
    rows = audit_rows(
        {"BTC": 0.6, "ETH": 0.4, "USDT": 0.0},
        {"BTC": 0.45, "ETH": 0.4, "USDT": 0.15},
        [("max_weight_per_coin", "BTC")],
    )
    assert rows == [
        AuditRow("BTC", 0.6, 0.45, "max_weight_per_coin"),
        AuditRow("USDT", 0.0, 0.15, REST),
    ]


def test_audit_rows_when_the_kill_switch_allowed_nothing() -> None:
    rows = audit_rows({"BTC": 0.5, "USDT": 0.5}, None, [("max_drawdown", "*")])
    assert [(r.asset, r.rules) for r in rows] == [("BTC", "max_drawdown"), ("USDT", "max_drawdown")]
    assert all(math.isnan(r.allowed) for r in rows)
    assert audit_rows({"BTC": 1.0}, None, []) == []


def step(
    k: int, wanted: dict[str, float], allowed: dict[str, float], **extra: object
) -> StepResult:
    ts = T0 + k * MINUTE_MS
    target = TargetWeights(ts, tuple(sorted(wanted.items())), "vote")
    return StepResult(
        ts,
        10_000.0,
        target,
        extra.get("refusals", ()),
        (),
        (),
        tuple(sorted(allowed.items())),
        extra.get("trims", ()),  # type: ignore[arg-type]
    )


async def test_latest_audit_reads_the_changed_closes_back_from_the_journal(tmp_path: Path) -> None:
    capped = RiskRefusal(T0, "max_weight_per_coin", "BTC", 0.6, 0.45, "cap 45%")
    trim = Trim("ETH", "buy", 2.0, 1.5, "max_order_notional")
    async with await Journal.open(tmp_path / "state.db") as journal:
        same = {"BTC": 0.5, "USDT": 0.5}
        await journal.record_decision(step(0, same, same))
        await journal.record_decision(
            step(1, {"BTC": 0.6, "USDT": 0.4}, {"BTC": 0.45, "USDT": 0.55}, refusals=(capped,))
        )
        await journal.record_decision(step(2, same, same, trims=(trim,)))
        await journal.record_decision(step(3, same, same))
        decisions = await journal.decisions(limit=10)
        assert [d["ts"] for d in await journal.decisions(limit=2)] == [
            T0 + 2 * MINUTE_MS,
            T0 + 3 * MINUTE_MS,
        ]

    audit = latest_audit(decisions, closes=5)
    assert audit["scanned"] == 4 and audit["since"] == "2024-03-01T00:00:00Z"
    assert [c["ts"] for c in audit["closes"]] == [
        "2024-03-01T00:01:00Z",
        "2024-03-01T00:02:00Z",
    ]
    first, second = audit["closes"]
    assert first["changes"] == [
        {"asset": "BTC", "wanted": 0.6, "allowed": 0.45, "rules": "max_weight_per_coin"},
        {"asset": "USDT", "wanted": 0.4, "allowed": 0.55, "rules": REST},
    ]
    assert first["source"] == "vote" and first["trims"] == []
    assert second["changes"] == []
    assert second["trims"] == [
        {
            "coin": "ETH",
            "side": "buy",
            "wanted": 2.0,
            "planned": 1.5,
            "reason": "max_order_notional",
        }
    ]
    assert [c["ts"] for c in latest_audit(decisions, closes=1)["closes"]] == [
        "2024-03-01T00:02:00Z"
    ]
    assert close_audit(decisions[0]) is None
    assert latest_audit([], 5) == {"closes": [], "scanned": 0, "since": None}


def decision(k: int, position: float, model: str = "btc-1") -> dict:
    return {
        "ts": T0 + k * MINUTE_MS,
        "inputs": {"modules": {"BTC": model}, "positions": {"BTC": position}},
    }


def test_module_diagnostics_measure_time_in_coin_and_flips_of_the_running_version() -> None:
    decisions = [
        {"ts": T0 - MINUTE_MS, "inputs": {"modules": {"BTC": "btc-1"}}},  # before positions
        decision(0, 0.0, "btc-0"),  # an older version: not counted
        decision(1, 0.0),
        decision(2, 1.0),
        decision(3, 1.0),
        decision(4, 0.0),
        decision(5, 1.0),
    ]
    diagnostics = module_diagnostics(decisions, "BTC", "btc-1")
    assert diagnostics == {
        "decisions": 5,
        "in_coin": 0.6,
        "flip_rate": 0.75,
        "last_flip": "2024-03-01T00:05:00Z",
    }
    assert module_diagnostics(decisions, "ETH", None)["decisions"] == 0
    assert module_diagnostics(decisions[:3], "BTC", "btc-1") == {
        "decisions": 1,
        "in_coin": 0.0,
        "flip_rate": 0.0,
        "last_flip": None,
    }


def test_readiness_by_the_daemons_clock() -> None:
    assert readiness(True, T0, T0 + 30_000, MINUTE_MS) == "ready"
    assert readiness(False, T0, T0 + 30_000, MINUTE_MS) == "warming up"
    assert readiness(True, None, T0, MINUTE_MS) == "waiting for its first bar"
    stale = readiness(True, T0, T0 + 5 * MINUTE_MS, MINUTE_MS)
    assert stale == "stale: last bar closed 2024-03-01T00:00:00Z, 5 bars ago"
