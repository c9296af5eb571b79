"""The control service's /regime and /audit answers, as every transport gets them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from bot.engine.kernel import Engine
from bot.engine.step import DecisionContext
from bot.live.control import DaemonControls, dispatch
from bot.telegram.format import format_regime
from config.schema import AppConfig


class FixedPolicy:
    name = "equal_weight"

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        return None


class RegimePolicy(FixedPolicy):
    """A policy exposing its regime controller (as ``mars`` does)."""

    name = "mars+manager"

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def regime_state(self) -> dict[str, Any] | None:
        return self.state


def controls(policy: FixedPolicy) -> DaemonControls:
    engine = Engine(AppConfig(), policy)
    return DaemonControls(
        engine,
        None,
        mode="paper",
        now_ms=lambda: 0,
        stop=asyncio.Event(),  # type: ignore[arg-type]
    )


async def test_a_policy_without_a_regime_controller_is_said_plainly() -> None:
    answer = await dispatch(controls(FixedPolicy()), {"command": "regime"})
    assert answer == {
        "ok": True,
        "result": {"policy": "equal_weight", "controller": False, "state": None},
    }
    assert format_regime(answer["result"]) == "Policy equal_weight has no regime controller."


async def test_regime_passes_on_what_the_policy_exposes() -> None:
    policy = RegimePolicy()
    service = controls(policy)
    before = await service.regime()
    assert before == {"policy": "mars+manager", "controller": True, "state": None}
    assert (
        format_regime(before) == "Policy mars+manager: its regime controller has not decided yet."
    )
    policy.state = {"exposure": 0.4, "variants": {"BTC": {"cash": 1.0}}, "features": {}}
    assert (await service.regime())["state"] == policy.state


async def test_audit_refuses_a_count_out_of_range_in_one_line() -> None:
    answer = await dispatch(controls(FixedPolicy()), {"command": "audit", "args": {"closes": 0}})
    assert answer == {"ok": False, "error": "audit: closes must be 1..50, got 0"}
