"""Crypto Modules in the running daemon: a hot swap between two cycles, then a rollback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.live_run import build_policy
from bot.events import ModuleDecision
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS
from config.schema import Secrets
from strategies import versions
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    HANG_GUARD_S,
    T0,
    live_config,
    next_cycle,
    seed_market,
    wait_ready,
)
from tests.integration.live.modules import constant_module

COINS = ("BTC", "ETH")


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        yield server


async def test_hot_swap_takes_effect_at_the_next_cycle_and_rollback_restores_the_old_module(
    fake: FakeBinance, tmp_path: Path
) -> None:
    """What the daemon promises: a swap whose module is loaded and warmed up lands at the next
    cycle. The test waits for that explicit state (``VoteHost.prepared``), never for time, so a
    loaded machine changes how long it runs, not what it sees."""
    root = tmp_path / "models"
    cash_btc = constant_module(fake, root, "BTC", 0, 1)
    coin_eth = constant_module(fake, root, "ETH", 1, 2)
    versions.activate(root, "BTC", cash_btc, reason="initial", at_ms=T0)
    versions.activate(root, "ETH", coin_eth, reason="initial", at_ms=T0)
    coin_btc = constant_module(fake, root, "BTC", 1, 3)  # saved, not active
    cfg = live_config(fake, tmp_path / "data", COINS, policy="vote", max_cycles=6)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"models_dir": root})})
    got: dict[str, Any] = {}
    decisions: list[ModuleDecision] = []

    async def grab(controls: Any) -> list[Any]:
        got["controls"] = controls
        controls.engine.bus.subscribe(ModuleDecision, decisions.append)
        return []

    daemon = asyncio.create_task(
        run_daemon(cfg, Secrets(), build_policy, install_signals=False, alerts_factory=grab)
    )
    db = state_path(cfg)
    await wait_ready(cfg.data.dir, daemon)
    controls = got["controls"]

    async def cycle(k: int) -> None:
        await next_cycle(fake, db, k, daemon=daemon)

    def btc_module_at(k: int) -> str:
        return next(
            d.module_id for d in decisions if d.coin == "BTC" and d.ts == T0 + k * MINUTE_MS
        )

    await cycle(0)
    await cycle(1)
    assert "will be swapped in" in await controls.plug("BTC", coin_btc)
    await controls.host.prepared()  # loaded and warmed up, off the cycle
    await cycle(2)
    await cycle(3)
    assert "rolled back" in await controls.rollback("BTC")
    await controls.host.prepared()
    await cycle(4)
    await cycle(5)
    await asyncio.wait_for(daemon, HANG_GUARD_S)

    assert [btc_module_at(k) for k in range(6)] == [cash_btc] * 2 + [coin_btc] * 2 + [cash_btc] * 2
    async with await Journal.open(db) as journal:
        cycles = await journal.cycles()
    assert [c["ts"] for c in cycles] == [T0 + k * MINUTE_MS for k in range(6)]  # none missed
    assert {c["status"] for c in cycles} == {"done"}
    weights = (await controls.weights())["target"]
    assert weights["BTC"] == 0.0 and weights["ETH"] == pytest.approx(0.5)
    assert versions.active_model(root, "BTC") == cash_btc
