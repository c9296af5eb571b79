"""MARS in the live daemon: the controller's weights and the manager's gross exposure are
journalled with every decision (state.db ``decisions.inputs``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.engine import DecisionContext
from bot.events import GrossExposure, VariantWeights
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from config.schema import AppConfig
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    T0,
    live_config,
    seed_market,
    step_cycles,
)

COINS = ("BTC", "ETH")
CYCLES = 3


class NotingPolicy:
    """Half in BTC; notes controller weights for both coins and a gross exposure each close."""

    name = "mars+manager"

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        if not context.deciding:
            return None
        for coin in COINS:
            weights = (("guarded", 0.75), ("hold", 0.25))
            positions = (("guarded", 0.0), ("hold", 1.0))
            context.note(VariantWeights(context.ts, coin, weights, positions, 0.25, self.name))
        context.note(GrossExposure(context.ts, 0.6, self.name))
        return {"BTC": 0.5}


async def factory(cfg: AppConfig, market: Any, metrics: Any, now_ms: int) -> tuple[Any, None]:
    return NotingPolicy(), None


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        server.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        yield server


async def test_controller_weights_and_gross_exposure_are_journalled_with_each_decision(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=True, max_cycles=CYCLES)
    daemon = asyncio.create_task(
        run_daemon(cfg, fake.secrets(API_KEY), factory, install_signals=False)
    )
    await step_cycles(fake, state_path(cfg), CYCLES, daemon=daemon)
    await asyncio.wait_for(daemon, 30)
    async with await Journal.open(state_path(cfg)) as journal:
        decisions = await journal.decisions()
    assert len(decisions) == CYCLES
    for decision in decisions:
        inputs = decision["inputs"]
        assert inputs["controller"] == {coin: {"guarded": 0.75, "hold": 0.25} for coin in COINS}
        assert inputs["gross_exposure"] == 0.6
