"""SIGKILL the daemon anywhere on its order path, start it again: no duplicate, nothing lost.

Each scenario runs the daemon as a child process against the fake exchange for a few cycles,
with the exchange's clock moved one bar at a time (so every run sees the same prices at the
same decisions). Kills land at random points: when the exchange receives the n-th order request
(before processing it: the order still executes, the daemon never hears back), when it has
booked it (the answer is lost), or at a random instant after a bar close (bar fetch, decision,
journal writes). After every kill the daemon is started again and must reconcile, finish or
redo the interrupted cycle, and go on. Every scenario must end with the same orders (by client
id, each placed once) and the same balances as a run that was never killed.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.live.daemon import state_path
from bot.timeframes import MINUTE_MS
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    GRACE_MS,
    T0,
    DaemonProcess,
    cycles_done,
    live_config,
    seed_market,
    wait_ready,
    write_config,
)

COINS = ("BTC", "ETH", "LINK")
CYCLES = 4


@dataclass(frozen=True)
class Kill:
    """Where to kill: at the ``index``-th order request's ``stage``, or ``delay_s`` after the
    close of cycle ``cycle`` was reached (stage ``"time"``)."""

    stage: str
    index: int = 0
    cycle: int = 0
    delay_s: float = 0.0


@dataclass
class Outcome:
    balances: dict[str, float]
    client_ids: list[str]
    kills: int
    starts: int


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        server.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        yield server


async def run_scenario(fake: FakeBinance, folder: Path, kills: list[Kill]) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = live_config(fake, folder / "data", COINS, paper=False)
    daemon = DaemonProcess(
        write_config(cfg, folder / "live.toml"),
        folder / "daemon.log",
        {"CRYPTORLPM_EXCHANGE_API_KEY": API_KEY, "CRYPTORLPM_EXCHANGE_SECRET": API_SECRET},
    )
    pending = sorted((k for k in kills if k.stage != "time"), key=lambda k: k.index)
    timed = {k.cycle: k for k in kills if k.stage == "time"}
    seen = {"received": 0, "processed": 0}
    killed = 0

    def hook(stage: str, info: dict[str, Any]) -> None:
        nonlocal killed
        if stage not in seen:
            return
        seen[stage] += 1
        if pending and pending[0].stage == stage and pending[0].index <= seen[stage]:
            pending.pop(0)
            daemon.kill()
            killed += 1

    fake.on_order(hook)
    db = state_path(cfg)

    async def keep_running() -> None:
        """Restart the daemon whenever it died, until it answers on its control socket."""
        while True:
            if not daemon.running:
                if daemon.proc is not None:
                    await daemon.wait()
                await daemon.start()
            try:
                await asyncio.wait_for(wait_ready(cfg.data.dir), 0.2)
                return
            except TimeoutError:
                continue

    async with asyncio.timeout(150):
        await keep_running()
        for k in range(CYCLES):
            fake.now_ms = T0 + k * MINUTE_MS + GRACE_MS + 5
            if k in timed:
                await asyncio.sleep(timed[k].delay_s)
                daemon.kill()
                killed += 1
            while await cycles_done(db) < k + 1:
                if not daemon.running:
                    await keep_running()
                await asyncio.sleep(0.02)
        await keep_running()
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = await daemon.wait()
    assert code == 0, daemon.log_text()[-3000:]
    fake.clear_order_hooks()
    ids = [o["clientOrderId"] for o in fake.orders(API_KEY)]
    return Outcome(fake.balances(API_KEY), ids, killed, daemon.starts)


def random_kills(rng: random.Random, orders: int) -> list[Kill]:
    """Two kills on the order path and one at a random instant after a close."""
    indexes = sorted(rng.sample(range(1, orders + 1), 2))
    kills = [Kill(rng.choice(("received", "processed")), index=i) for i in indexes]
    kills.append(Kill("time", cycle=rng.randrange(CYCLES), delay_s=rng.uniform(0.0, 0.4)))
    return kills


async def reference(tmp_path: Path) -> Outcome:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as clean:
        seed_market(clean, COINS)
        clean.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        return await run_scenario(clean, tmp_path / "reference", [])


def assert_same(run: Outcome, ref: Outcome, label: str) -> None:
    assert len(run.client_ids) == len(set(run.client_ids)), f"{label}: duplicate order"
    assert sorted(run.client_ids) == sorted(ref.client_ids), f"{label}: different orders"
    for asset, amount in ref.balances.items():
        assert run.balances.get(asset, 0.0) == pytest.approx(amount, rel=1e-12, abs=1e-12), (
            f"{label}: {asset}"
        )


async def test_sigkill_anywhere_on_the_order_path_never_duplicates_or_loses_an_order(
    tmp_path: Path,
) -> None:
    ref = await reference(tmp_path)
    assert len(ref.client_ids) >= 2 * CYCLES  # the scenario trades at every cycle
    rng = random.Random(20261121)
    kills = 0
    for run in range(7):
        async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as fake:
            seed_market(fake, COINS)
            fake.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
            plan = random_kills(rng, len(ref.client_ids))
            outcome = await run_scenario(fake, tmp_path / f"run{run}", plan)
        assert_same(outcome, ref, f"run {run} ({plan})")
        kills += outcome.kills
    assert kills >= 20
