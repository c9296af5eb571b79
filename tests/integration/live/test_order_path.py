"""The order path against the fake Binance as ccxt sees the real testnet: busy servers, revoked
keys, fees in every asset, bans. Each test drives the daemon on the fake's stepped clock (or a
driven ban clock) and reads what happened from the exchange's side and from ``state.db``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from bot.cli.live_run import build_policy
from bot.feed.guard import GuardClock
from bot.live.daemon import DaemonResult, run_daemon, state_path
from bot.live.status import read_status
from bot.store.journal import Journal, JournalOrder
from bot.timeframes import MINUTE_MS
from config.schema import AppConfig
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    GRACE_MS,
    T0,
    cycles_done,
    live_config,
    seed_market,
    step_cycles,
    wait_ready,
)

COINS = ("BTC", "ETH", "LINK")
ORDER = "/api/v3/order"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        server.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        yield server


async def run_cycles(fake: FakeBinance, cfg: AppConfig, cycles: int) -> DaemonResult:
    cfg = cfg.model_copy(update={"live": cfg.live.model_copy(update={"max_cycles": cycles})})
    daemon = asyncio.create_task(
        run_daemon(cfg, fake.secrets(API_KEY), build_policy, install_signals=False)
    )
    stepper = asyncio.create_task(step_cycles(fake, state_path(cfg), cycles))
    done, _ = await asyncio.wait({daemon, stepper}, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()
    await stepper
    return await asyncio.wait_for(daemon, 10)


async def journal_orders(cfg: AppConfig) -> list[JournalOrder]:
    async with await Journal.open(state_path(cfg)) as journal:
        return await journal.orders()


def posts(fake: FakeBinance, cid: str | None = None) -> list[str]:
    """Client ids of the order requests the exchange received, faulted ones included (for
    client id ``cid`` only, when given)."""
    ids = [
        dict(parse_qsl(r.body)).get("newClientOrderId", "")
        for r in fake.requests(ORDER)
        if r.method == "POST"
    ]
    return [i for i in ids if cid is None or i == cid]


async def test_server_busy_1008_is_temporary_and_the_order_is_placed_once(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    fake.inject_code(f"POST {ORDER}", -1008, status=503)  # the first order: refused, busy
    with caplog.at_level(logging.WARNING):
        await run_cycles(fake, cfg, 1)
    first = posts(fake)[0]
    assert len(posts(fake, first)) == 2  # refused once, sent again
    assert [o["clientOrderId"] for o in fake.orders(API_KEY)].count(first) == 1
    assert "OperationFailed" in caplog.text and "sending it again" in caplog.text
    assert {o.status for o in await journal_orders(cfg)} == {"filled"}


async def test_a_key_revoked_mid_run_halts_trading_with_zero_resends(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False, max_cycles=None)
    cfg = cfg.model_copy(update={"live": cfg.live.model_copy(update={"max_cycles": None})})
    stop = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon(cfg, fake.secrets(API_KEY), build_policy, install_signals=False, stop=stop)
    )
    db = state_path(cfg)
    await step_cycles(fake, db, 1)  # one cycle trades with a good key
    traded = len(posts(fake))
    assert traded >= 3
    fake.revoke(API_KEY)  # -2015 from now on: ccxt raises it as DDoSProtection (it worked once)
    fake.set_price("ETHUSDT", fake.price("ETHUSDT") * 1.5)  # so the next cycle wants to trade
    with caplog.at_level(logging.ERROR):
        for k in (1, 2, 3):
            fake.now_ms = T0 + k * MINUTE_MS + GRACE_MS + 5
            while await cycles_done(db) + await skipped(db) < k + 1:
                await asyncio.sleep(0.02)
    stop.set()
    result = await asyncio.wait_for(daemon, 10)
    assert len(posts(fake)) - traded <= 1, "an order was sent again after -2015"
    refused = [r for r in fake.order_requests if r.code == -2015]
    assert len(refused) == len(posts(fake)) - traded
    halts = [r for r in caplog.records if "refused the API key" in r.getMessage()]
    assert len(halts) == 1, [r.getMessage() for r in halts]
    assert "DDoSProtection" in halts[0].getMessage() or "-2015" in halts[0].getMessage()
    async with await Journal.open(db) as journal:
        assert "refused the API key" in (await journal.get("trading_halt") or "")
        statuses = [c["status"] for c in await journal.cycles()]
    assert statuses[0] == "done" and statuses[-1] == "skipped"
    status = await read_status(db)
    assert status["trading"][0].startswith("TRADING HALTED: the exchange refused the API key")
    assert "stopped" in result.reason


async def skipped(db: Path) -> int:
    async with await Journal.open(db) as journal:
        return sum(1 for c in await journal.cycles() if c["status"] == "skipped")


async def test_bnb_commissions_are_journalled_and_valued_in_the_quote_currency(
    fake: FakeBinance, tmp_path: Path
) -> None:
    fake.add_market("BNBUSDT")
    fake.set_price("BNBUSDT", 250.0)
    fake.set_balance(API_KEY, "BNB", 5.0)  # pays fees in BNB (with Binance's 25 % discount)
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    await run_cycles(fake, cfg, 1)
    orders = [o for o in await journal_orders(cfg) if o.filled > 0]
    assert orders
    trades = {t["orderId"]: t for t in fake.trades(API_KEY)}
    for order in orders:
        trade = trades[int(order.exchange_order_id or 0)]
        assert (order.fee_asset, trade["commissionAsset"]) == ("BNB", "BNB")
        assert order.fee == pytest.approx(float(trade["commission"]), abs=1e-12)
        assert order.fee_quote == pytest.approx(float(trade["commission"]) * 250.0, rel=1e-9)
        notional = float(trade["quoteQty"])
        assert order.fee_quote == pytest.approx(notional * 0.001 * 0.75, rel=1e-6)
    assert fake.balances(API_KEY)["BNB"] < 5.0


async def test_a_limit_order_filled_after_it_rested_is_journalled_with_its_fee(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, ("BTC",), paper=False, order_type="limit")
    above = {}

    def rest_then_fill(stage: str, info: dict[str, Any]) -> None:
        # The price jumps above the buy limit as the order arrives (it rests on the book),
        # then comes back under it: the order fills while the daemon follows it.
        if stage == "received":
            above["price"] = fake.price("BTCUSDT")
            fake.set_price("BTCUSDT", above["price"] * 1.01)
        elif stage == "processed":
            assert info["order"]["status"] == "NEW"
            fake.set_price("BTCUSDT", above["price"] * 0.999)

    fake.on_order(rest_then_fill)
    await run_cycles(fake, cfg, 1)
    [order] = await journal_orders(cfg)
    assert (order.order_type, order.status) == ("limit", "filled")
    [trade] = fake.trades(API_KEY)
    assert trade["isMaker"] is True
    assert order.fee_asset == trade["commissionAsset"] == "BTC"
    assert order.fee == pytest.approx(float(trade["commission"]), abs=1e-12)
    assert order.fee_quote == pytest.approx(
        float(Decimal(trade["commission"]) * Decimal(trade["price"])), rel=1e-9
    )
    assert order.fee > 0
    assert any(r.path == "/api/v3/myTrades" for r in fake.requests())


async def test_a_418_ban_sends_nothing_until_its_retry_after_has_passed(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [T0]
    ban_clock = GuardClock(now_ms=lambda: now[0], sleep_ms=lambda ms: asyncio.sleep(0))
    fake.accelerate(T0 - 30_000, speed=60.0)  # one 1m bar a second, for the daemon and the fake
    cfg = live_config(fake, tmp_path, COINS, paper=False, clock_speed=60.0, max_cycles=None)
    stop = asyncio.Event()
    banned_at: list[int] = []

    def ban_on_first_order(stage: str, info: dict[str, Any]) -> None:
        if stage == "received" and not banned_at:  # this order goes through; then a 2 h ban
            banned_at.append(len(fake.requests()))
            fake.ban(7200)

    fake.on_order(ban_on_first_order)
    daemon = asyncio.create_task(
        run_daemon(
            cfg,
            fake.secrets(API_KEY),
            build_policy,
            install_signals=False,
            stop=stop,
            guard_clock=ban_clock,
        )
    )
    db = state_path(cfg)
    with caplog.at_level(logging.WARNING):
        async with asyncio.timeout(60):
            await wait_ready(cfg.data.dir)
            while await skipped(db) < 3:  # three closes pass during the ban
                await asyncio.sleep(0.02)
            during = fake.requests()[banned_at[0] :]  # the first got the 418, and no more
            assert len(during) == 1, f"requests during the ban: {[r.path for r in during]}"
            assert fake.requests_during_ban == 1
            status = await read_status(db)
            assert any(line.startswith("EXCHANGE BAN: HTTP 418") for line in status["trading"])
            sent_before = len(posts(fake))
            # The ban's two hours (and the minute the 418'd request added) pass on the ban
            # clock...
            now[0] += 7260 * 1000
            fake.state.banned_until_ms = None  # ...and on the exchange's
            while await done_after(db, await last_skipped(db)) < 1:
                await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(daemon, 10)
    after = fake.requests()[banned_at[0] + 1 :]
    first_order = next(i for i, r in enumerate(after) if r.path == ORDER and r.method == "POST")
    assert any(r.path == "/api/v3/account" for r in after[:first_order]), "no reconcile first"
    assert len(posts(fake)) > sent_before
    assert "no request and no trading until" in caplog.text
    assert "skipped: exchange ban until" in caplog.text


async def last_skipped(db: Path) -> int:
    async with await Journal.open(db) as journal:
        return max(c["ts"] for c in await journal.cycles() if c["status"] == "skipped")


async def done_after(db: Path, ts: int) -> int:
    async with await Journal.open(db) as journal:
        return sum(1 for c in await journal.cycles() if c["status"] == "done" and c["ts"] > ts)


async def test_large_orders_go_out_as_slices_over_the_interval_each_journalled(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    cfg = cfg.model_copy(
        update={
            "execution": cfg.execution.model_copy(
                update={"slice_above_notional": 1_000.0, "max_slices": 3, "schedule": "twap"}
            )
        }
    )
    await run_cycles(fake, cfg, 1)  # 1/3 of 10 000 per coin: 3 slices each
    orders = await journal_orders(cfg)
    first = T0 // 1000
    assert [o.client_order_id for o in orders] == [
        f"rlpm-{first}-{c}-b{i}" for c in COINS for i in (1, 2, 3)
    ]
    assert {o.status for o in orders} == {"filled"}
    assert [o.send_at_ms for o in orders[:3]] == [None, T0 + 15_000, T0 + 30_000]
    placed = fake.orders(API_KEY)
    assert sorted(o["clientOrderId"] for o in placed) == sorted(o.client_order_id for o in orders)
    times = {o["clientOrderId"]: o["time"] for o in placed}
    btc = [times[f"rlpm-{first}-BTC-b{i}"] for i in (1, 2, 3)]
    assert btc[0] < btc[1] < btc[2] and btc[2] >= T0 + 30_000  # each at its own time
