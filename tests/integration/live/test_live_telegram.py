"""The daemon with Telegram: alerts from real trading cycles, commands that steer it, outages.

The daemon trades in paper mode on the fake exchange; Telegram is the fake Bot API driven by
python-telegram-bot, wired exactly as ``cryptorlpm live`` wires it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.cli.live_run import alerts_factory, build_policy
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from bot.telegram.chats import MIGRATIONS_KEY
from config.schema import AppConfig, Secrets, TelegramConfig
from tests.fakes.binance import FakeBinance
from tests.fakes.telegram import DEFAULT_TOKEN, FakeTelegram
from tests.integration.live.harness import (
    HANG_GUARD_S,
    T0,
    live_config,
    next_cycle,
    seed_market,
    wait_ready,
)

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

COINS = ("BTC", "ETH")
OPERATOR, STRANGER = 42, 666


@pytest.fixture
async def exchange() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def config(exchange: FakeBinance, telegram: FakeTelegram, folder: Path, **risk: float) -> AppConfig:
    cfg = live_config(exchange, folder, COINS, risk=risk or None)
    settings = TelegramConfig(
        enabled=True,
        api_url=telegram.url,
        chat_ids=(OPERATOR,),
        per_chat_per_s=200.0,
        global_per_s=200.0,
        poll_timeout_s=1,
        daily_summary_hour=None,
    )
    return cfg.model_copy(update={"telegram": settings})


class Daemon:
    """The daemon in a task, and the exchange clock moved one close at a time."""

    def __init__(self, cfg: AppConfig, exchange: FakeBinance) -> None:
        self.cfg, self.exchange = cfg, exchange
        secrets = Secrets(telegram_token=DEFAULT_TOKEN)
        self.task = asyncio.create_task(
            run_daemon(
                cfg,
                secrets,
                build_policy,
                install_signals=False,
                alerts_factory=alerts_factory(cfg, secrets),
            )
        )
        self.k = 0

    async def ready(self) -> None:
        await wait_ready(self.cfg.data.dir, self.task)

    async def cycle(self) -> None:
        await next_cycle(self.exchange, state_path(self.cfg), self.k, daemon=self.task)
        self.k += 1

    async def cycles(self) -> list[dict]:
        async with await Journal.open(state_path(self.cfg)) as journal:
            return await journal.cycles()


def texts(telegram: FakeTelegram, chat: int = OPERATOR) -> list[str]:
    return [m.text for m in telegram.sent if m.chat_id == chat]


async def test_alerts_and_commands_steer_the_running_daemon(
    exchange: FakeBinance, telegram: FakeTelegram, tmp_path: Path
) -> None:
    # A 45% cap on each coin cuts 1/N = 50% at every decision: the guardrail working as
    # configured, not alerted. A 4,000 USDT cap per order cuts the first buys: alerted.
    cfg = config(exchange, telegram, tmp_path, max_weight_per_coin=0.45, max_order_notional=4_000.0)
    daemon = Daemon(cfg, exchange)
    await daemon.ready()
    await telegram.wait_for(lambda: any("started" in t.lower() for t in texts(telegram)))

    await daemon.cycle()  # trades: fill alerts, refusal alerts
    await telegram.wait_for(lambda: any(t.startswith("BUY ") for t in texts(telegram)))
    await telegram.wait_for(lambda: any("max_order_notional" in t for t in texts(telegram)))

    telegram.inject_command(STRANGER, "/pause")
    await telegram.wait_for(lambda: texts(telegram, STRANGER))
    assert "not authorised" in texts(telegram, STRANGER)[0].lower()

    telegram.inject_command(OPERATOR, "/pause")
    await telegram.wait_for(lambda: any(t.startswith("paused") for t in texts(telegram)))
    await daemon.cycle()
    await daemon.cycle()
    telegram.inject_command(OPERATOR, "/resume")
    await telegram.wait_for(lambda: any(t.startswith("resumed") for t in texts(telegram)))
    await daemon.cycle()

    exchange.inject("/api/v3/klines", 503, times=None)  # the exchange fails a whole cycle
    await daemon.cycle()
    exchange.clear_faults()
    await telegram.wait_for(lambda: any("failed" in t for t in texts(telegram)), HANG_GUARD_S)

    telegram.inject_command(OPERATOR, "/stop")
    await telegram.wait_for(lambda: any("/stop confirm" in t for t in texts(telegram)))
    telegram.inject_command(OPERATOR, "/stop confirm")
    result = await asyncio.wait_for(daemon.task, HANG_GUARD_S)
    assert "stopped" in result.reason

    assert not any("max_weight_per_coin" in t for t in texts(telegram))
    async with await Journal.open(state_path(daemon.cfg)) as journal:
        kept = {r["rule"] for r in await journal.refusals()}
    assert {"max_weight_per_coin", "max_order_notional"} <= kept  # both kept in state.db
    orders = [c["orders"] for c in await daemon.cycles()]
    assert orders[0] > 0 and orders[1] == orders[2] == 0 and orders[3] > 0  # paused, resumed
    assert (await daemon.cycles())[4]["status"] == "failed"
    assert any("stopped" in t.lower() for t in texts(telegram))


async def test_a_telegram_outage_delays_no_cycle_and_the_alerts_arrive_afterwards(
    exchange: FakeBinance, telegram: FakeTelegram, tmp_path: Path
) -> None:
    await telegram.refuse_connections(True)
    daemon = Daemon(config(exchange, telegram, tmp_path), exchange)
    await daemon.ready()
    for _ in range(4):
        await daemon.cycle()
    cycles = await daemon.cycles()
    assert [c["status"] for c in cycles] == ["done"] * 4
    assert max(c["latency_ms"] for c in cycles) < 1_000  # no cycle waited on Telegram
    fills = await fills_of(daemon)
    assert fills > 0 and not telegram.sent
    await telegram.refuse_connections(False)
    await telegram.wait_for(
        lambda: sum(t.startswith(("BUY ", "SELL ")) for t in texts(telegram)) == fills,
        HANG_GUARD_S,
    )
    daemon.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await daemon.task


async def fills_of(daemon: Daemon) -> int:
    async with await Journal.open(state_path(daemon.cfg)) as journal:
        return sum(1 for o in await journal.orders() if o.filled > 0)


async def test_a_migrated_group_is_remembered_in_state_db_and_used_after_a_restart(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    group, supergroup = -4_005_006, -1_009_005_006
    settings = TelegramConfig(
        enabled=True, api_url=telegram.url, chat_ids=(group,), daily_summary_hour=None
    )
    cfg = AppConfig(telegram=settings)
    secrets = Secrets(telegram_token=DEFAULT_TOKEN)
    telegram.migrate_chat(group, supergroup)

    async def run_once(text: str) -> None:
        async with await Journal.open(tmp_path / "state.db") as journal:
            services = await alerts_factory(cfg, secrets)(SimpleNamespace(journal=journal))
            alerts = services[0]
            await alerts.start()
            alerts.notify(text)
            await alerts.close(flush_timeout_s=5.0)
            await services[1].close()

    await run_once("before the restart")
    async with await Journal.open(tmp_path / "state.db") as journal:
        assert await journal.get(MIGRATIONS_KEY) == {str(group): supergroup}
    await run_once("after the restart")

    assert texts(telegram, supergroup) == ["before the restart", "after the restart"]
    sent_to_group = [c for c in telegram.calls_of("sendMessage") if c.params["chat_id"] == group]
    assert len(sent_to_group) == 1  # only the first run had to be told
