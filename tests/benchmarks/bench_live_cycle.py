"""Live daemon latency: bar close to every order acknowledged, 10 coins, against the fake Binance.

The daemon runs as its own process (``cryptorlpm live``, exchange mode, ccxt, signed orders,
state.db with FULL sync) against the fake exchange in this process. The exchange's clock is
moved to each bar close (+ the 1 s grace) once the previous cycle is done; the policy is 1/N
rebalancing, so prices drifting every bar make orders at (nearly) every cycle. Measured:

  close->ack : wall time from the moment the exchange's clock reached close + grace to the
               fake's answer to the cycle's last order (includes the daemon noticing the close:
               it confirms the exchange's time by polling, every <= 10 ms here);
  cycle      : the daemon's own figure in state.db: cycle start to the last order's answer
               (bar fetch for 10 coins, decision, journal, orders);
  RSS        : the daemon's resident memory after the run (VmRSS / VmHWM).

Run: ``.venv/bin/python tests/benchmarks/bench_live_cycle.py [--cycles 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.store.journal import Journal
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

COINS = ("BTC", "ETH", "BNB", "SOL", "XRP", "ADA", "DOGE", "LINK", "DOT", "LTC")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def main(cycles: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as fake:
            seed_market(fake, COINS, hours=30 + cycles // 60)
            fake.add_account(API_KEY, API_SECRET, {"USDT": 100_000.0})
            cfg = live_config(fake, folder / "data", COINS, paper=False, clock_speed=6000.0)
            daemon = DaemonProcess(
                write_config(cfg, folder / "live.toml"),
                folder / "daemon.log",
                {"CRYPTORLPM_EXCHANGE_API_KEY": API_KEY, "CRYPTORLPM_EXCHANGE_SECRET": API_SECRET},
            )
            acks: list[float] = []
            fake.on_order(
                lambda stage, info: (
                    acks.append(time.perf_counter()) if stage == "processed" else None
                )
            )
            started = time.perf_counter()
            await daemon.start()
            await asyncio.wait_for(wait_ready(cfg.data.dir), 120)
            ready = time.perf_counter() - started
            print(f"daemon ready in {ready:.1f} s (start-up, warm-up bars, reconciliation)")
            db = cfg.data.dir / cfg.live.state_db
            close_to_ack: list[float] = []
            orders = 0
            for k in range(cycles):
                acks.clear()
                fake.now_ms = T0 + k * MINUTE_MS + GRACE_MS
                reached = time.perf_counter()
                while await cycles_done(db) < k + 1:
                    await asyncio.sleep(0.002)
                if acks:
                    close_to_ack.append((acks[-1] - reached) * 1000)
                    orders += len(acks)
                if (k + 1) % 50 == 0:
                    print(f"  {k + 1}/{cycles} cycles", flush=True)
            assert daemon.proc is not None
            memory = rss_kib(daemon.proc.pid)
            daemon.proc.send_signal(signal.SIGTERM)
            await daemon.wait()
            async with await Journal.open(db) as journal:
                rows = await journal.cycles()
            own = [c["latency_ms"] for c in rows if c["orders"] and c["latency_ms"] is not None]
    print(f"{cycles} cycles, {len(COINS)} coins, {orders} orders ({orders / cycles:.1f} per cycle)")
    print(
        f"close->all orders acked: p50 {percentile(close_to_ack, 50):.1f} ms, "
        f"p99 {percentile(close_to_ack, 99):.1f} ms, max {max(close_to_ack):.1f} ms "
        f"(over {len(close_to_ack)} cycles with orders)"
    )
    print(
        f"daemon cycle (state.db): p50 {percentile(own, 50):.1f} ms, "
        f"p99 {percentile(own, 99):.1f} ms, mean {statistics.mean(own):.1f} ms"
    )
    rss, peak = memory["VmRSS"] / 1024, memory["VmHWM"] / 1024
    print(f"daemon memory: RSS {rss:.1f} MiB, peak {peak:.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    asyncio.run(main(parser.parse_args().cycles))
