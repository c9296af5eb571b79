"""The daemon in paper mode against the fake exchange's public endpoints."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from bot.cli.live_run import build_policy
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from config.schema import Secrets
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    REPO,
    T0,
    live_config,
    seed_market,
    step_cycles,
    wait_ready,
    write_config,
)

COINS = ("BTC", "ETH")


@pytest.fixture
async def fake() -> FakeBinance:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        yield server


async def test_paper_daemon_rebalances_to_equal_weights_and_journals_every_cycle(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, COINS, max_cycles=3)
    stop = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon(cfg, Secrets(), build_policy, stop=stop, install_signals=False)
    )
    await step_cycles(fake, state_path(cfg), 3)
    result = await asyncio.wait_for(daemon, 10)
    assert result.cycles == 3
    async with await Journal.open(state_path(cfg)) as journal:
        cycles = await journal.cycles()
        orders = await journal.orders()
        balances = await journal.balances()
    assert [c["status"] for c in cycles] == ["done"] * 3
    assert [c["ts"] for c in cycles] == [T0, T0 + 60_000, T0 + 120_000]
    assert orders and all(o.status == "filled" for o in orders)
    assert len({o.client_order_id for o in orders}) == len(orders)
    # equal weights within lot rounding and fees
    prices = {
        c: fake.candles(f"{c}USDT", "1m").set_index("open_time").loc[T0 + 120_000 - 60_000, "close"]
        for c in COINS
    }
    equity = balances["USDT"] + sum(balances[c] * prices[c] for c in COINS)
    for coin in COINS:
        assert balances[coin] * prices[coin] / equity == pytest.approx(0.5, abs=0.01)


async def run_cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli.main",
        "live",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_cli_pauses_the_running_daemon_and_reads_its_status(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path / "data", COINS, max_cycles=2)
    path = write_config(cfg, tmp_path / "live.toml")
    daemon = asyncio.create_task(run_daemon(cfg, Secrets(), build_policy, install_signals=False))
    await asyncio.wait_for(wait_ready(cfg.data.dir), 30)
    assert "paused" in await run_cli("pause", "--config", str(path))
    await step_cycles(fake, state_path(cfg), 2)
    await asyncio.wait_for(daemon, 10)
    async with await Journal.open(state_path(cfg)) as journal:
        assert [c["orders"] for c in await journal.cycles()] == [0, 0]  # paused: no order
    status = await run_cli("status", "--config", str(path))
    assert "cycles: 2" in status and "paused: True" in status


async def test_cli_reads_the_guardrail_audit_and_the_regime_of_the_running_daemon(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path / "data", COINS, risk={"max_weight_per_coin": 0.45})
    path = write_config(cfg, tmp_path / "live.toml")
    daemon = asyncio.create_task(run_daemon(cfg, Secrets(), build_policy, install_signals=False))
    await step_cycles(fake, state_path(cfg), 2, daemon=daemon)
    audit = (await run_cli("audit", "--closes", "1", "--config", str(path))).splitlines()
    assert audit[0] == (
        "Guardrail audit: 1 close(s) changed, in the last 2 decisions since 2024-03-01T00:00:00Z"
    )
    assert audit[1].startswith("2024-03-01T00:01:00Z (equal_weight), ")
    assert "  BTC: wanted 50.0% -> allowed 45.0% (max_weight_per_coin)" in audit
    assert "  USDT: wanted 0.0% -> allowed 10.0% (rest of the weights)" in audit
    regime = await run_cli("regime", "--config", str(path))
    assert regime.strip() == "Policy equal_weight has no regime controller."
    daemon.cancel()
    with pytest.raises(asyncio.CancelledError):
        await daemon


async def test_a_guardrail_working_as_configured_is_logged_as_information_not_a_warning(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # min_cash 20% scales 1/N down at every decision: the configured cash floor at work.
    cfg = live_config(fake, tmp_path, COINS, risk={"min_cash": 0.2}, max_cycles=2)
    caplog.set_level(logging.INFO, logger="bot.live.driver")
    daemon = asyncio.create_task(run_daemon(cfg, Secrets(), build_policy, install_signals=False))
    await step_cycles(fake, state_path(cfg), 2)
    await asyncio.wait_for(daemon, 10)

    guardrails = [r for r in caplog.records if r.getMessage().startswith("guardrail ")]
    assert len(guardrails) == 2 * len(COINS)  # each coin, each cycle
    assert all("min_cash" in r.getMessage() for r in guardrails)
    assert {r.levelno for r in guardrails} == {logging.INFO}
    async with await Journal.open(state_path(cfg)) as journal:
        assert {r["rule"] for r in await journal.refusals()} == {"min_cash"}  # still journalled
