"""On-chain metrics inside the daemon: Santiment late, then back.

The daemon refreshes the metric its BTC module reads from the fake Santiment (sanpy, the real
client) on a schedule. Santiment is late at first (its newest day is three days old): the module
is reported not ready in ``live status`` and in what ``/status`` answers, with the day of its
last value, and its vote counts as cash. Then Santiment serves the missing days: the next
refresh stores them known from when the daemon fetched them, the next cycle publishes them, and
the module is ready again. No instant hands the module a value before its known time. Waits are
on explicit states (a cycle's row in state.db, the refresh task), never on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from bot.engine.step import DecisionContext
from bot.events import Bar, Metric, ModuleDecision
from bot.live.daemon import run_daemon, state_path
from bot.live.status import read_status
from bot.telegram.format import format_status
from bot.timeframes import DAY_MS, MINUTE_MS, to_ms
from config.schema import MetricsConfig, SantimentConfig, Secrets
from strategies.live import ReadyVote, ready_vote
from strategies.portfolio import PortfolioVote
from tests.fakes.binance import FakeBinance
from tests.fakes.santiment import FakeSantiment
from tests.integration.live.harness import (
    HANG_GUARD_S,
    T0,
    live_config,
    next_cycle,
    seed_market,
    wait_ready,
)

COINS = ("BTC", "ETH")
MVRV = ("BTC", "mvrv_usd")
LATE_UNTIL = to_ms("2024-02-27T00:00:00")
"""Santiment's newest day while it is late."""
RESUME_AFTER = 2
"""Santiment serves the missing days after this cycle."""
CYCLES = 6


class AlwaysInModule:
    """A module that always wants its coin and records every metric it is handed."""

    def __init__(self, coin: str, keys: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.coin = coin
        self.model_id = f"{coin.lower()}-test"
        self.symbol = f"{coin}/USDT"
        self.metric_keys = keys
        self.received: list[Metric] = []

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        if bar.symbol != self.symbol:
            return None
        return ModuleDecision(bar.ts, self.model_id, self.coin, 0.0, 1.0)

    def on_metric(self, metric: Metric) -> None:
        self.received.append(metric)


class Watched:
    """The daemon's vote policy (:class:`ReadyVote`), recording each instant's metrics and
    each decision with the modules that were not ready."""

    def __init__(self, inner: ReadyVote) -> None:
        self.inner = inner
        self.name = inner.name
        self.not_ready = inner.not_ready
        self.shown: list[tuple[int, Metric]] = []
        self.answers: list[tuple[int, dict[str, float], dict[str, str]]] = []

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        self.shown += [(context.ts, m) for m in context.instant.metrics]
        answer = self.inner.decide(context)
        if context.deciding and answer is not None:
            self.answers.append((context.ts, dict(answer), self.not_ready()))
        return answer


@pytest.fixture
async def exchange() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS, hours=80)
        server.stream_klines("1m")
        yield server


@pytest.fixture
async def santiment() -> AsyncIterator[FakeSantiment]:
    async with FakeSantiment(now_ms=T0 - 20_000) as server:
        days = range(LATE_UNTIL - 20 * DAY_MS, LATE_UNTIL + 1, DAY_MS)
        server.add_series("bitcoin", "mvrv_usd", {d: 1.0 + d / DAY_MS % 7 for d in days})
        yield server


async def test_a_late_metric_makes_its_module_not_ready_then_ready_never_used_before_known(
    exchange: FakeBinance, santiment: FakeSantiment, tmp_path: Path
) -> None:
    cfg = live_config(
        exchange,
        tmp_path / "data",
        COINS,
        max_cycles=CYCLES,
        warmup_days=3,
        metrics_refresh_minutes=0.5,
        metric_max_age_days=0.5,
        not_ready="cash",
    )
    cfg = cfg.model_copy(
        update={
            "santiment": SantimentConfig(api_url=santiment.url, retries=0),
            "metrics": MetricsConfig(publication_lag_hours=0.0),
        }
    )
    btc, eth = AlwaysInModule("BTC", frozenset({MVRV})), AlwaysInModule("ETH")
    got: dict[str, Any] = {}

    async def factory(cfg: Any, market: Any, metrics: Any, now_ms: int) -> tuple[Any, None]:
        vote = PortfolioVote("USDT", [btc, eth])
        got["policy"] = Watched(await ready_vote(cfg, vote, metrics, now_ms))
        return got["policy"], None

    async def grab(controls: Any) -> list[Any]:
        got["controls"] = controls
        return []

    daemon = asyncio.create_task(
        run_daemon(
            cfg,
            Secrets(_env_file=None),
            factory,
            install_signals=False,
            alerts_factory=grab,
            inputs=lambda _: {"BTC": (MVRV,), "ETH": ()},
        )
    )
    db = state_path(cfg)
    await wait_ready(cfg.data.dir, daemon)
    controls = got["controls"]
    refresher = controls.inputs.refresher
    policy: Watched = got["policy"]
    late_reason = (
        "BTC not ready: metric mvrv_usd has no value since 2024-02-27; its vote counts as cash"
    )

    resumed_at = None
    for k in range(CYCLES):
        await next_cycle(exchange, db, k, daemon=daemon)
        santiment.now_ms = exchange.now_ms
        status = await controls.status()  # what Telegram's /status shows
        on_disk = await read_status(db)  # what `cryptorlpm live status` shows
        if k <= RESUME_AFTER:
            assert late_reason in status["trading"], status["trading"]
            assert late_reason in on_disk["trading"]
            assert late_reason in format_status(status)
            assert "free plan" in (on_disk["inputs"]["santiment"] or "")
        if k == RESUME_AFTER:  # Santiment catches up; the refresh after the next cycle gets it
            await refresher.idle()  # (none in flight that could see it early)
            days = (LATE_UNTIL + DAY_MS, LATE_UNTIL + 2 * DAY_MS)
            santiment.add_series("bitcoin", "mvrv_usd", {d: 50.0 for d in days})
            resumed_at = exchange.now_ms
        if k == RESUME_AFTER + 1:
            await refresher.idle()  # the refresh kicked after this cycle has stored them
        if k >= RESUME_AFTER + 2:
            assert not any("not ready" in line for line in status["trading"])
            assert on_disk["inputs"]["coins"]["BTC"]["not_ready"] is None
            assert on_disk["inputs"]["santiment"] is None
            assert any(
                line.startswith("BTC: bar ") and "BTC:mvrv_usd 2024-02-29 (santiment)" in line
                for line in on_disk["input_lines"]
            ), on_disk["input_lines"]
    await asyncio.wait_for(daemon, HANG_GUARD_S)

    # The vote: BTC's sleeve in cash while not ready, back to the module's weight after.
    decided = {ts: (weights, not_ready) for ts, weights, not_ready in policy.answers}
    assert sorted(decided) == [T0 + k * MINUTE_MS for k in range(CYCLES)]
    for k in range(CYCLES):
        weights, not_ready = decided[T0 + k * MINUTE_MS]
        assert weights["ETH"] == pytest.approx(0.5)
        if k <= RESUME_AFTER + 1:
            assert "BTC" in not_ready and weights["BTC"] == 0.0
        else:
            assert not not_ready and weights["BTC"] == pytest.approx(0.5)

    # No value reached the module before its known time, and the late days are known from when
    # the daemon fetched them (after Santiment resumed), not from when their day ended.
    assert all(metric.ts <= ts for ts, metric in policy.shown)
    assert {(m.asset, m.name) for m in btc.received} == {MVRV} and not eth.received
    async with aiosqlite.connect(cfg.data.dir / "metrics.db") as conn:
        rows = await (
            await conn.execute(
                "SELECT observed_at, known_at, source FROM metric WHERE name = 'mvrv_usd' "
                "AND observed_at > ? ORDER BY observed_at",
                (LATE_UNTIL,),
            )
        ).fetchall()
    assert [r[0] for r in rows] == [LATE_UNTIL + DAY_MS, LATE_UNTIL + 2 * DAY_MS]
    assert resumed_at is not None
    assert all(known > resumed_at and source == "santiment" for _, known, source in rows)
    first_seen = {m.observed_at: ts for ts, m in policy.shown if m.observed_at > LATE_UNTIL}
    assert set(first_seen.values()) == {T0 + (RESUME_AFTER + 2) * MINUTE_MS}
