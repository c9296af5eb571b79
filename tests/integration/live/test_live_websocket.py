"""The daemon on the kline websocket: every close decided once, in order, whatever the stream.

The fake exchange pushes each candle when its (stepped) clock passes the close, as Binance
does, and between cycles the test drops the connection, expires it (Binance's 24 h limit),
stalls it, and pushes duplicates of old closes. The policy records every instant it is shown.
The daemon must decide at every close exactly once, in order, with every coin's bar of that
close, and nothing twice; REST stands in while the stream is away. Waits are on explicit states
(a cycle's row in state.db, the fake's sockets), never on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.engine.step import DecisionContext
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS
from config.schema import Secrets
from strategies.baselines import EqualWeightRebalanced
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    HANG_GUARD_S,
    T0,
    live_config,
    next_cycle,
    seed_market,
    wait_ready,
)

COINS = ("BTC", "ETH", "LINK")
CYCLES = 24
STREAMS = [f"{c.lower()}usdt@kline_1m" for c in COINS]


class RecordingPolicy:
    """1/N rebalancing that records every instant it is shown."""

    name = "equal_weight"

    def __init__(self) -> None:
        self.inner = EqualWeightRebalanced(COINS)
        self.seen: list[tuple[int, bool, tuple[str, ...]]] = []

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        instant = context.instant
        self.seen.append(
            (instant.ts, instant.decide, tuple(sorted(b.symbol for b in instant.bars)))
        )
        return self.inner.decide(context)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        server.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        server.stream_klines("1m")
        yield server


async def test_every_close_is_decided_once_in_order_through_drops_stalls_and_duplicates(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(
        fake,
        tmp_path / "data",
        COINS,
        paper=False,
        max_cycles=CYCLES,
        stream_stall_s=0.3,
        stream_reconnect_s=0.02,
    )
    policy = RecordingPolicy()
    got: dict[str, Any] = {}

    async def factory(*_: Any) -> tuple[Any, None]:
        return policy, None

    async def grab(controls: Any) -> list[Any]:
        got["controls"] = controls
        return []

    secrets = Secrets(exchange_api_key=API_KEY, exchange_secret=API_SECRET)
    daemon = asyncio.create_task(
        run_daemon(cfg, secrets, factory, install_signals=False, alerts_factory=grab)
    )
    db = state_path(cfg)
    await wait_ready(cfg.data.dir, daemon)
    driver = got["controls"].inputs.driver

    async def connected(connections: int) -> None:
        await fake.wait_sockets(
            lambda: fake.connections >= connections and all(fake.subscribers(s) for s in STREAMS),
            HANG_GUARD_S,
        )

    await connected(1)
    for k in range(CYCLES):
        before = fake.connections
        if k == 4:
            await fake.drop_websockets()  # mid-candle: the close is still to come
        elif k == 8:
            await fake.expire_websockets(max_age_ms=0)  # Binance's 24 h close, early
        elif k == 12:
            fake.stall_websockets()  # open and silent: the daemon must notice itself
        elif k in (15, 16):  # the exchange repeats closes already decided
            for coin in COINS:
                frame = fake.candles(f"{coin}USDT", "1m")
                old = frame[frame.open_time == T0 + (k - 3) * MINUTE_MS].to_numpy()[0].tolist()
                await fake.push_kline(f"{coin}USDT", "1m", old, closed=True, store=False)
        await next_cycle(fake, db, k, daemon=daemon)
        if k in (4, 8, 12):  # back on the socket before the next close
            await connected(before + 1)
    await asyncio.wait_for(daemon, HANG_GUARD_S)

    symbols = tuple(sorted(f"{c}/USDT" for c in COINS))
    decided = [(ts, bars) for ts, deciding, bars in policy.seen if deciding]
    assert decided == [(T0 + k * MINUTE_MS, symbols) for k in range(CYCLES)]
    assert all(bars == symbols for _, _, bars in policy.seen)  # no bar shown twice or late
    async with await Journal.open(db) as journal:
        cycles = await journal.cycles()
    assert [c["ts"] for c in cycles] == [T0 + k * MINUTE_MS for k in range(CYCLES)]
    assert {c["status"] for c in cycles} == {"done"}
    stream = driver.stream
    assert stream.drops >= 3 and stream.stalls >= 1
    streamed = sum(stream.counts(f"{c}/USDT")[0] for c in COINS)
    assert streamed >= len(COINS) * CYCLES // 2  # most closes came from the socket
