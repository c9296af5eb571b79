"""Running the live daemon against the fake exchange: configs, a stepped exchange clock.

The exchange's clock is frozen and moved one bar at a time by :func:`step_cycles` once the daemon
has finished the previous cycle (read from ``state.db``), so every run sees the same prices at
the same decisions and runs are comparable to the order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite

from bot.timeframes import MINUTE_MS, to_ms
from config.schema import AppConfig, BrokerConfig, DataConfig, LiveConfig, MarketConfig, RiskConfig
from tests.fakes.binance import FakeBinance, synthetic_candles

T0 = to_ms("2024-03-01T00:00:00")
"""The first close the daemon trades at."""
GRACE_MS = 1_000
API_KEY = "test-api-key-0123456789abcdef"
API_SECRET = "test-api-secret-fedcba9876543210"


def seed_market(fake: FakeBinance, coins: tuple[str, ...], *, hours: int = 30) -> None:
    """1m candles for ``coins`` from ``hours`` before T0 to 6 hours after it."""
    start = T0 - hours * 60 * MINUTE_MS
    n = (hours + 6) * 60
    for i, coin in enumerate(coins):
        fake.set_candles(
            f"{coin}USDT",
            "1m",
            synthetic_candles(
                n, start_ms=start, timeframe="1m", start_price=100.0 * (i + 1), seed=i
            ),
        )


def live_config(
    fake: FakeBinance,
    data_dir: Path,
    coins: tuple[str, ...] = ("BTC", "ETH"),
    *,
    paper: bool = True,
    policy: str = "equal_weight",
    risk: dict[str, Any] | None = None,
    **live: Any,
) -> AppConfig:
    """A 1-minute-bar daemon config aimed at ``fake``."""
    return AppConfig(
        data=DataConfig(dir=data_dir),
        market=MarketConfig(
            source="exchange",
            exchange="binance",
            coins=coins,
            base_timeframe="1m",
            timeframe="1m",
            start="2024-01-01",
            end="2024-12-31",
        ),
        exchange=fake.exchange_config(max_retries=3, retry_base_s=0.05),
        broker=BrokerConfig(initial_cash=10_000.0, slippage_bps=0.0),
        risk=RiskConfig(**(risk or {})),
        live=LiveConfig(
            paper=paper,
            policy=policy,
            grace_s=GRACE_MS / 1000,
            warmup_days=1,
            clock_speed=600.0,
            order_poll_s=0.05,
            limit_timeout_s=0.5,
            **live,
        ),
    )


async def cycles_done(state_db: Path) -> int:
    """Cycles finished (done, failed or abandoned) in ``state_db`` (0 before it exists)."""
    if not state_db.exists():
        return 0
    try:
        async with (
            aiosqlite.connect(state_db) as db,
            db.execute(
                "SELECT COUNT(*) FROM cycles WHERE status IN ('done', 'failed', 'abandoned')"
            ) as cursor,
        ):
            row = await cursor.fetchone()
    except aiosqlite.OperationalError:  # not created yet
        return 0
    return int(row[0]) if row else 0


async def step_cycles(
    fake: FakeBinance, state_db: Path, cycles: int, *, first_close: int = T0, timeout: float = 20.0
) -> None:
    """Move the exchange's clock to each close (+ grace) once the previous cycle is done.

    Waits first for the daemon's control socket: it opens once start-up (warm-up,
    reconciliation) is over and the daemon waits for its first close.
    """
    socket = state_db.parent / "control.sock"
    async with asyncio.timeout(timeout):
        while not socket.exists():
            await asyncio.sleep(0.02)
        for k in range(cycles):
            fake.now_ms = first_close + k * MINUTE_MS + GRACE_MS + 5
            while await cycles_done(state_db) < k + 1:
                await asyncio.sleep(0.02)
