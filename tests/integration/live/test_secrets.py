"""The exchange key and secret never reach the logs (even at debug level) or state.db."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bot.live.daemon import state_path
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    T0,
    DaemonProcess,
    live_config,
    seed_market,
    step_cycles,
    write_config,
)

COINS = ("BTC", "ETH")


async def test_api_key_and_secret_appear_in_no_log_line_and_no_state_file(tmp_path: Path) -> None:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as fake:
        seed_market(fake, COINS)
        fake.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        fake.inject("/api/v3/order", 503, times=1)  # an error path, logged with its request
        cfg = live_config(fake, tmp_path / "data", COINS, paper=False)
        daemon = DaemonProcess(
            write_config(cfg, tmp_path / "live.toml"),
            tmp_path / "daemon.log",
            {"CRYPTORLPM_EXCHANGE_API_KEY": API_KEY, "CRYPTORLPM_EXCHANGE_SECRET": API_SECRET},
            verbose=True,  # ccxt logs every request, headers included, at debug level
        )
        await daemon.start()
        async with asyncio.timeout(60):
            await step_cycles(fake, state_path(cfg), 2)
            daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert await daemon.wait() == 0
        assert fake.orders(API_KEY), "the run placed no order: nothing was signed"
    log = daemon.log_path.read_bytes()
    assert b"X-MBX-APIKEY" in log or b"x-mbx-apikey" in log.lower()  # headers were logged...
    files = [daemon.log_path, *cfg.data.dir.rglob("*")]
    for path in (p for p in files if p.is_file()):
        content = path.read_bytes()
        for secret in (API_KEY, API_SECRET):
            assert secret.encode() not in content, f"{secret[:6]}... found in {path.name}"
