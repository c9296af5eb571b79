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
from urllib.parse import parse_qsl

import pytest

from bot.live.daemon import state_path
from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    GRACE_MS,
    T0,
    DaemonProcess,
    advance_to_unknown_checks,
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

    close = T0  # the close of the cycle under way

    async def keep_running() -> None:
        """Restart the daemon whenever it died, until it answers on its control socket (its
        start-up may settle an order of unknown fate: the clock follows its checks)."""
        while True:
            if not daemon.running:
                if daemon.proc is not None:
                    await daemon.wait()
                await daemon.start()
            try:
                await asyncio.wait_for(wait_ready(cfg.data.dir), 0.2)
                return
            except TimeoutError:
                await advance_to_unknown_checks(fake, db, close + MINUTE_MS - 1)

    async with asyncio.timeout(150):
        await keep_running()
        for k in range(CYCLES):
            close = T0 + k * MINUTE_MS
            fake.now_ms = close + GRACE_MS + 5
            if k in timed:
                if not daemon.running:
                    await keep_running()
                await asyncio.sleep(timed[k].delay_s)
                daemon.kill()
                await daemon.wait()  # reaped: a dying daemon must not pass for a live one
                killed += 1
            while await cycles_done(db) < k + 1:
                if not daemon.running:
                    await keep_running()
                await advance_to_unknown_checks(fake, db, close + MINUTE_MS - 1)
                await asyncio.sleep(0.02)
        await keep_running()
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = await daemon.wait()
    assert code == 0, daemon.log_text()[-3000:]
    fake.clear_order_hooks()
    ids = [o["clientOrderId"] for o in fake.orders(API_KEY)]
    return Outcome(fake.balances(API_KEY), ids, killed, daemon.starts)


KILLS_PER_RUN = 5
TIMED_KILLS = 2
CI_RUNS = range(6)
"""Scenarios every test run covers: 6 x 5 = 30 kill points."""
SLOW_RUNS = range(6, 27)
"""Scenarios of ``-m slow``: 21 x 5 = 105 more kill points."""


def random_kills(rng: random.Random, orders: int) -> list[Kill]:
    """Three kills on the order path (as the exchange receives or has booked an order) and two
    at random instants after two different closes (bar fetch, decision, journal, sending)."""
    indexes = sorted(rng.sample(range(1, orders + 1), KILLS_PER_RUN - TIMED_KILLS))
    kills = [Kill(rng.choice(("received", "processed")), index=i) for i in indexes]
    for cycle in sorted(rng.sample(range(CYCLES), TIMED_KILLS)):
        kills.append(Kill("time", cycle=cycle, delay_s=rng.uniform(0.0, 0.4)))
    return kills


_REFERENCE: dict[str, Outcome] = {}


async def reference(tmp_path: Path) -> Outcome:
    """The run that was never killed (once per test session)."""
    if "ref" not in _REFERENCE:
        async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as clean:
            seed_market(clean, COINS)
            clean.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
            _REFERENCE["ref"] = await run_scenario(clean, tmp_path / "reference", [])
    return _REFERENCE["ref"]


def assert_same(run: Outcome, ref: Outcome, label: str) -> None:
    assert len(run.client_ids) == len(set(run.client_ids)), f"{label}: duplicate order"
    assert sorted(run.client_ids) == sorted(ref.client_ids), f"{label}: different orders"
    for asset, amount in ref.balances.items():
        assert run.balances.get(asset, 0.0) == pytest.approx(amount, rel=1e-12, abs=1e-12), (
            f"{label}: {asset}"
        )


async def killed_run(tmp_path: Path, run: int) -> None:
    ref = await reference(tmp_path)
    assert len(ref.client_ids) >= 2 * CYCLES  # the scenario trades at every cycle
    plan = random_kills(random.Random(20261121 + run), len(ref.client_ids))
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as fake:
        seed_market(fake, COINS)
        fake.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        outcome = await run_scenario(fake, tmp_path / f"run{run}", plan)
    assert_same(outcome, ref, f"run {run} ({plan})")
    assert outcome.kills == KILLS_PER_RUN


@pytest.mark.parametrize("run", CI_RUNS)
async def test_sigkill_anywhere_on_the_order_path_never_duplicates_or_loses_an_order(
    tmp_path: Path, run: int
) -> None:
    await killed_run(tmp_path, run)


@pytest.mark.slow
@pytest.mark.parametrize("run", SLOW_RUNS)
async def test_sigkill_at_a_hundred_more_random_points(tmp_path: Path, run: int) -> None:
    await killed_run(tmp_path, run)


async def order_status(db: Path, cid: str) -> str | None:
    async with await Journal.open(db) as journal:
        row = await journal.order(cid)
    return None if row is None else row.status


async def first_unknown(db: Path) -> str:
    """Wait for an order of unknown fate in ``db``; its client id."""
    while True:
        if db.exists():
            async with await Journal.open(db) as journal:
                unknown = await journal.unknown_orders()
            if unknown:
                return unknown[0].client_order_id
        await asyncio.sleep(0.02)


async def test_an_order_of_unknown_fate_survives_kills_and_restarts_and_exists_once(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path / "data", COINS, paper=False)
    daemon = DaemonProcess(
        write_config(cfg, tmp_path / "live.toml"),
        tmp_path / "daemon.log",
        {"CRYPTORLPM_EXCHANGE_API_KEY": API_KEY, "CRYPTORLPM_EXCHANGE_SECRET": API_SECRET},
    )
    db = state_path(cfg)
    # The first order is placed, but its answer is lost (-1007: execution status unknown), and
    # the exchange cannot say anything about it (lookups and order lists fail) until told to.
    fake.inject_code("POST /api/v3/order", -1007, processed=True)
    fake.inject_code("GET /api/v3/order", -1007, times=None)
    fake.inject_code("GET /api/v3/allOrders", -1001, times=None)
    lookups = lambda: sum(1 for r in fake.requests("/api/v3/order") if r.method == "GET")  # noqa: E731
    async with asyncio.timeout(90):
        await daemon.start()
        await wait_ready(cfg.data.dir)
        fake.now_ms = T0 + GRACE_MS + 5
        cid = await first_unknown(db)
        for _ in range(3):  # SIGKILL while its fate is unknown; each restart asks again
            asked = lookups()
            daemon.kill()
            await daemon.wait()
            await daemon.start()
            while lookups() == asked:
                await asyncio.sleep(0.02)
            assert await order_status(db, cid) == "unknown"
        fake.clear_faults()  # the exchange can answer again: its record settles the order
        while await order_status(db, cid) != "filled":
            await advance_to_unknown_checks(fake, db, T0 + MINUTE_MS - 1)
            await asyncio.sleep(0.02)
        while await cycles_done(db) < 1:
            await advance_to_unknown_checks(fake, db, T0 + MINUTE_MS - 1)
            await asyncio.sleep(0.02)
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await daemon.wait() == 0, daemon.log_text()[-3000:]
    sent = [dict(parse_qsl(r.body)).get("newClientOrderId") for r in fake.requests("/api/v3/order")]
    assert sent.count(cid) == 1, "the order of unknown fate was sent again"
    assert [o["clientOrderId"] for o in fake.orders(API_KEY)].count(cid) == 1
    async with await Journal.open(db) as journal:
        row = await journal.order(cid)
    assert row is not None and row.booked == row.filled > 0
    assert daemon.starts == 4


async def test_a_kill_between_slices_resumes_the_remaining_slices_once(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path / "data", COINS, paper=False)
    cfg = cfg.model_copy(
        update={
            "execution": cfg.execution.model_copy(
                update={"slice_above_notional": 1_000.0, "max_slices": 3, "schedule": "twap"}
            )
        }
    )
    daemon = DaemonProcess(
        write_config(cfg, tmp_path / "live.toml"),
        tmp_path / "daemon.log",
        {"CRYPTORLPM_EXCHANGE_API_KEY": API_KEY, "CRYPTORLPM_EXCHANGE_SECRET": API_SECRET},
    )
    db = state_path(cfg)
    killed: list[str] = []

    def kill_after_the_second_slice(stage: str, info: dict[str, Any]) -> None:
        sliced = str(info.get("client_order_id", "")).endswith("b2")
        if stage == "processed" and sliced and not killed:
            killed.append(info["client_order_id"])
            daemon.kill()

    fake.on_order(kill_after_the_second_slice)
    async with asyncio.timeout(90):
        await daemon.start()
        await wait_ready(cfg.data.dir)
        fake.now_ms = T0 + GRACE_MS + 5
        while not killed:
            await advance_to_unknown_checks(fake, db, T0 + MINUTE_MS - 1)
            await asyncio.sleep(0.02)
        await daemon.wait()
        await daemon.start()
        while await cycles_done(db) < 1:
            await advance_to_unknown_checks(fake, db, T0 + MINUTE_MS - 1)
            await asyncio.sleep(0.02)
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await daemon.wait() == 0, daemon.log_text()[-3000:]
    placed = [o["clientOrderId"] for o in fake.orders(API_KEY)]
    first = T0 // 1000
    assert sorted(placed) == sorted(f"rlpm-{first}-{c}-b{i}" for c in COINS for i in (1, 2, 3))
    assert daemon.starts == 2
