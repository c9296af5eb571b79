"""Live trading decides what a replay of the same data decides, close by close.

The daemon runs in exchange mode against the fake Binance (TLS, real error mapping) on a stepped
clock, with a policy that reads bars and on-chain-like metrics stored in metrics.db; then the
same history (the candles the daemon stored, the same metrics) is replayed through the engine
and the simulated venue. At every close the target weights, the guardrails' refusals and the
client order ids must be identical. ``live diff`` (the replay of a state dir) agrees, and names
the cause when the stored data is changed afterwards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from backtest.replay import ReplayDriver
from bot.engine import DecisionContext, Engine
from bot.engine.kernel import market_rules
from bot.events import OrderFilled
from bot.live.daemon import run_daemon, state_path
from bot.live.diff import diff_decisions
from bot.store import MarketStore, MetricStore
from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS
from bot.venues.sim import SimVenue
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
CYCLES = 10


class TrendAndGauge:
    """Each coin at 0.45 while its close is above its mean of the last 5 closes and the
    ``MARKET`` gauge (a metric) is positive; else cash. Reads bars and metrics only."""

    name = "trend_gauge"

    def __init__(self, coins: tuple[str, ...]) -> None:
        self.closes = {c: deque(maxlen=5) for c in coins}
        self.gauge = 0.0

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        for metric in context.instant.metrics:
            if metric.asset == "MARKET":
                self.gauge = metric.value
        for bar in context.instant.bars:
            self.closes[bar.symbol.split("/")[0]].append(bar.close)
        if not context.deciding:
            return None
        up = [
            c
            for c, closes in self.closes.items()
            if len(closes) == 5 and closes[-1] > sum(closes) / 5 and self.gauge > 0
        ]
        return dict.fromkeys(up, 0.45)


async def factory(cfg: AppConfig, market: Any, metrics: Any, now_ms: int) -> tuple[Any, None]:
    return TrendAndGauge(cfg.market.coins), None


async def seed_metrics(cfg: AppConfig) -> None:
    """A gauge whose sign flips every 3 minutes, each value known 2 minutes after it."""
    rows = []
    for k in range(-120, CYCLES + 2):
        observed = T0 + k * 3 * MINUTE_MS
        rows.append(("MARKET", "gauge", observed, observed + 2 * MINUTE_MS, (-1.0) ** k))
    async with await MetricStore.open(cfg.data.metrics_path) as store:
        await store.upsert_metrics(rows, "test")


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        server.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        yield server


async def replay(cfg: AppConfig) -> dict[int, tuple[Any, list, list]]:
    """The same history through the engine and the simulated venue: per decision close, the
    target weights, refusals and client order ids."""
    async with (
        await MarketStore.open(cfg.data.market_path) as market,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        driver = await ReplayDriver.from_stores(
            market,
            metrics,
            exchange=cfg.market.exchange,
            symbols=[cfg.market.symbol(c) for c in COINS],
            timeframe=cfg.market.timeframe,
            start_ms=T0,
            end_ms=T0 + CYCLES * MINUTE_MS,
        )
    engine = Engine(cfg, TrendAndGauge(COINS))
    venue = SimVenue(cfg.broker, cfg.market.quote, market_rules(cfg), driver.next_open)
    decided = {}
    for instant in driver.instants():
        result = engine.step(instant)
        for order in result.orders:
            fill = venue.execute(order)
            if isinstance(fill, OrderFilled):
                engine.book(fill)
        if instant.decide:
            decided[result.ts] = (
                None if result.target is None else dict(result.target.weights),
                [[r.rule, r.asset, r.wanted, r.allowed] for r in result.refusals],
                [o.client_order_id for o in result.orders],
                None if result.allowed is None else dict(result.allowed),
            )
    return decided


async def test_the_daemon_decides_at_every_close_what_a_replay_of_the_same_data_decides(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(
        fake,
        tmp_path,
        COINS,
        paper=False,
        policy="equal_weight",
        risk={"max_weight_per_coin": 0.4, "min_trade_weight": 0.01},
        max_cycles=CYCLES,
    )
    await seed_metrics(cfg)
    daemon = asyncio.create_task(
        run_daemon(cfg, fake.secrets(API_KEY), factory, install_signals=False)
    )
    await step_cycles(fake, state_path(cfg), CYCLES, daemon=daemon)
    await asyncio.wait_for(daemon, 30)

    async with await Journal.open(state_path(cfg)) as journal:
        live = {d["ts"]: d for d in await journal.decisions()}
    replayed = await replay(cfg)
    assert sorted(live) == sorted(replayed) == [T0 + k * MINUTE_MS for k in range(CYCLES)]
    trades = refused = 0
    for ts, (target, refusals, orders, allowed) in replayed.items():
        mine = live[ts]
        assert dict(mine["allowed"]) == pytest.approx(allowed), ts  # the audit trail too
        assert mine["target"] is not None and dict(mine["target"]) == pytest.approx(target), ts
        assert [r[:2] for r in mine["refusals"]] == [r[:2] for r in refusals], ts
        for got, want in zip(mine["refusals"], refusals, strict=True):
            assert got[2:] == pytest.approx(want[2:]), ts
        assert mine["orders"] == orders, ts
        trades += len(orders)
        refused += len(refusals)
    # Not vacuous: the policy traded, the guardrails refused, the gauge and the bars mattered.
    assert trades >= 4 and refused >= 2
    assert len({tuple(sorted(dict(d["target"]))) for d in live.values()}) >= 3
    assert {o["clientOrderId"] for o in fake.orders(API_KEY)} == {
        o for _, _, orders, _ in replayed.values() for o in orders
    }

    # `live diff` on the daemon's state dir agrees with it...
    report = await diff_decisions(cfg, state_path(cfg), factory)
    assert report.compared == CYCLES and report.differences == []
    # ...and names the cause when the store changes behind it: a candle revised down at a
    # close where the daemon held BTC.
    revised = min(ts for ts, d in live.items() if "BTC" in dict(d["target"]))
    async with await MarketStore.open(cfg.data.market_path) as market:
        frame = await market.read_candles("binance", "BTC/USDT", "1m")
        row = frame.loc[frame["open_time"] == revised - MINUTE_MS].iloc[0]
        low = row.low / 2
        await market.upsert_candles(
            "binance", "BTC/USDT", "1m", [(int(row.open_time), row.open, row.high, low, low, 1.0)]
        )
    report = await diff_decisions(cfg, state_path(cfg), factory)
    assert report.differences, "a BTC close halved must change a decision"
    first = report.differences[0]
    assert first.ts == revised and "BTC: live saw close" in first.why
    assert "revised" in first.why
