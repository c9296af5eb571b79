"""Live daemon latency: bar close to every order acknowledged, 10 coins, against the fake Binance.

The daemon runs as its own process (``cryptorlpm live``, exchange mode, ccxt, signed orders,
state.db with FULL sync) against the fake exchange in this process. The exchange's clock is
moved to each bar close (+ the 1 s grace) once the previous cycle is done; the policy is 1/N
rebalancing, so prices drifting every bar make orders at (nearly) every cycle. Two runs in this
process: bars from the kline websocket (the default), with the stream dropped, expired (Binance's
24 h close), stalled, or fed duplicates of old closes every ``--inject-every`` cycles; then the
REST-only source as the baseline. Measured:

  close->ack : wall time from the moment the exchange's clock reached close + grace to the
               fake's answer to the cycle's last order (includes the daemon noticing the close:
               it confirms the exchange's time by polling, every <= 10 ms here);
  cycle      : the daemon's own figure in state.db: cycle start to the last order's answer
               (bars for 10 coins, decision, journal, orders);
  RSS        : the daemon's resident memory after the run (VmRSS / VmHWM);
  closes     : every close must have one finished cycle whose decision read every coin's bar
               of that close: missed = closes without, duplicated = bars stored twice or a close
               decided twice (state.db, market.db).

Run: ``.venv/bin/python tests/benchmarks/bench_live_cycle.py [--cycles 500]
[--baseline-cycles 200] [--inject-every 25]``
(figures before this change, REST polling, orders one after another: close->ack p50 94 ms,
p99 195 ms; daemon cycle p50 172 ms, p99 233 ms; RSS 220 MiB, on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS
from tests.fakes.binance import FakeBinance, synthetic_candles
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    GRACE_MS,
    T0,
    DaemonProcess,
    cycles_done,
    live_config,
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


def seed(fake: FakeBinance, cycles: int) -> None:
    """1m candles for every coin from 30 hours before T0 to past the last close."""
    start = T0 - 30 * 60 * MINUTE_MS
    for i, coin in enumerate(COINS):
        candles = synthetic_candles(
            30 * 60 + cycles + 120,
            start_ms=start,
            timeframe="1m",
            start_price=100.0 * (i + 1),
            seed=i,
        )
        fake.set_candles(f"{coin}USDT", "1m", candles)


INJECTIONS = ("drop", "expire", "stall", "duplicate")


async def inject(fake: FakeBinance, what: str, k: int) -> None:
    """Disturb the kline stream before close ``k``."""
    if what == "drop":
        await fake.drop_websockets()
    elif what == "expire":
        await fake.expire_websockets(max_age_ms=0)
    elif what == "stall":
        fake.stall_websockets()
    else:  # the exchange repeats closes already decided
        for coin in COINS:
            frame = fake.candles(f"{coin}USDT", "1m")
            old = frame[frame.open_time == T0 + (k - 3) * MINUTE_MS].to_numpy()[0].tolist()
            await fake.push_kline(f"{coin}USDT", "1m", old, closed=True, store=False)


async def check_closes(cfg: Any, cycles: int, log_text: str) -> tuple[int, int]:
    """(missed, duplicated) closes of the run. Missed: a close without a finished cycle whose
    decision read every coin's bar of that close, or a bar missing from market.db. Duplicated:
    bars handed to the engine beyond one per coin and close (the daemon logs each cycle's
    count)."""
    expected = [T0 + k * MINUTE_MS for k in range(cycles)]
    async with await Journal.open(cfg.data.dir / cfg.live.state_db) as journal:
        rows = await journal.cycles()
        decisions = await journal.decisions()
    done = {c["ts"] for c in rows if c["status"] == "done"}
    complete = set()
    for d in decisions:
        bars = (d.get("inputs") or {}).get("bars") or {}
        if len(bars) == len(COINS) and all(b[0] == d["ts"] for b in bars.values()):
            complete.add(d["ts"])
    missed = sum(1 for ts in expected if ts not in done or ts not in complete)
    with sqlite3.connect(cfg.data.dir / "market.db") as db:
        (stored,) = db.execute(
            "SELECT COUNT(*) FROM ohlcv WHERE timeframe = '1m'"
            " AND open_time >= ? AND open_time < ?",
            (T0 - MINUTE_MS, T0 + (cycles - 1) * MINUTE_MS),
        ).fetchone()
    missed += cycles * len(COINS) - int(stored)
    handed = [int(n) for n in re.findall(r"cycle \S+: (\d+) bars", log_text)]
    if len(handed) != cycles:
        raise SystemExit(f"the daemon log has {len(handed)} cycle lines, expected {cycles}")
    duplicated = sum(max(0, n - len(COINS)) for n in handed)
    return missed, duplicated


async def run(cycles: int, source: str, inject_every: int | None) -> dict[str, Any]:
    """One daemon run; returns its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as fake:
            seed(fake, cycles)
            fake.add_account(API_KEY, API_SECRET, {"USDT": 100_000.0})
            if source == "websocket":
                fake.stream_klines("1m")
            cfg = live_config(
                fake,
                folder / "data",
                COINS,
                paper=False,
                clock_speed=6000.0,
                bar_source=source,
                stream_stall_s=1.0,
                stream_reconnect_s=0.05,
            )
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
            print(
                f"[{source}] daemon ready in {ready:.1f} s (start-up, warm-up bars, reconciliation)"
            )
            db = cfg.data.dir / cfg.live.state_db
            close_to_ack: list[float] = []
            orders = 0
            injected: dict[str, int] = dict.fromkeys(INJECTIONS, 0)
            for k in range(cycles):
                if inject_every and k >= 4 and k % inject_every == 0:
                    what = INJECTIONS[(k // inject_every) % len(INJECTIONS)]
                    await inject(fake, what, k)
                    injected[what] += 1
                acks.clear()
                fake.now_ms = T0 + k * MINUTE_MS + GRACE_MS
                reached = time.perf_counter()
                while await cycles_done(db) < k + 1:
                    await asyncio.sleep(0.002)
                if acks:
                    close_to_ack.append((acks[-1] - reached) * 1000)
                    orders += len(acks)
                if (k + 1) % 50 == 0:
                    print(f"  [{source}] {k + 1}/{cycles} cycles", flush=True)
            assert daemon.proc is not None
            memory = rss_kib(daemon.proc.pid)
            daemon.proc.send_signal(signal.SIGTERM)
            await daemon.wait()
            async with await Journal.open(db) as journal:
                rows = await journal.cycles()
                inputs = await journal.get("inputs")
            own = [c["latency_ms"] for c in rows if c["orders"] and c["latency_ms"] is not None]
            log_text = daemon.log_text()
            missed, duplicated = await check_closes(cfg, cycles, log_text)
    stream = (inputs or {}).get("stream") or {}
    streamed = sum(int(n) for n in re.findall(r"bars \((\d+) from the websocket\)", log_text))
    return {
        "source": source,
        "cycles": cycles,
        "orders": orders,
        "ack": close_to_ack,
        "own": own,
        "rss": memory["VmRSS"] / 1024,
        "peak": memory["VmHWM"] / 1024,
        "missed": missed,
        "duplicated": duplicated,
        "injected": injected,
        "stream": stream,
        "tracebacks": log_text.count("Traceback"),
        "streamed": streamed,
    }


def report(r: dict[str, Any]) -> None:
    """Print one run's figures."""
    ack, own = r["ack"], r["own"]
    print(
        f"[{r['source']}] {r['cycles']} cycles, {len(COINS)} coins, {r['orders']} orders "
        f"({r['orders'] / r['cycles']:.1f} per cycle)"
    )
    if r["source"] == "websocket":
        print(
            f"[{r['source']}] injected: "
            + ", ".join(f"{n} {what}" for what, n in r["injected"].items())
            + f"; the daemon saw {r['stream'].get('drops')} drop(s), "
            f"{r['stream'].get('stalls')} stall(s), "
            f"{r['stream'].get('connections')} connection(s); "
            f"{r['streamed']} of {r['cycles'] * len(COINS)} bars came from the websocket"
        )
    print(
        f"[{r['source']}] closes missed: {r['missed']}, duplicated: {r['duplicated']}, "
        f"tracebacks in the daemon log: {r['tracebacks']}"
    )
    print(
        f"[{r['source']}] close->all orders acked: p50 {percentile(ack, 50):.1f} ms, "
        f"p99 {percentile(ack, 99):.1f} ms, max {max(ack):.1f} ms "
        f"(over {len(ack)} cycles with orders)"
    )
    print(
        f"[{r['source']}] daemon cycle (state.db): p50 {percentile(own, 50):.1f} ms, "
        f"p99 {percentile(own, 99):.1f} ms, mean {statistics.mean(own):.1f} ms"
    )
    print(f"[{r['source']}] daemon memory: RSS {r['rss']:.1f} MiB, peak {r['peak']:.1f} MiB")


async def main(cycles: int, baseline_cycles: int, inject_every: int) -> None:
    ws = await run(cycles, "websocket", inject_every)
    report(ws)
    if baseline_cycles:
        rest = await run(baseline_cycles, "rest", None)
        report(rest)
        for label, key in (("close->ack", "ack"), ("daemon cycle", "own")):
            for q in (50, 99):
                a, b = percentile(ws[key], q), percentile(rest[key], q)
                print(f"{label} p{q}: websocket / REST = {a / b:.2f}")
    print(
        "before this change (REST polling, orders one after another): close->ack p50 94 ms, "
        "p99 195 ms; daemon cycle p50 172 ms, p99 233 ms; RSS 220 MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--baseline-cycles", type=int, default=200)
    parser.add_argument("--inject-every", type=int, default=25)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.baseline_cycles, args.inject_every))
