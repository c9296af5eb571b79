"""Model operations over Telegram against the running daemon: /modules, /audit, /regime,
/retrain, and /plug and /unplug behind a one-time code, on the daemon's (exchange) clock.

The daemon trades a vote of two tiny constant Crypto Modules (BTC always cash, ETH always in
the coin) in paper mode on the fake exchange; Telegram is the fake Bot API. The confirmation
windows run on the exchange's stepped clock: a code expires because the test moved the
exchange three closes on, never because the test slept.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.live_run import alerts_factory, build_policy
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from config.schema import Secrets, TelegramConfig
from strategies import versions
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
from tests.integration.live.test_hot_swap import constant_module

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

COINS = ("BTC", "ETH")
OPERATOR, COLLEAGUE, STRANGER = 42, 43, 666


@pytest.fixture
async def exchange() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


class Chat:
    """One chat with the bot: send a command, wait for the bot's answer to it."""

    def __init__(self, telegram: FakeTelegram, chat_id: int) -> None:
        self.telegram, self.chat_id = telegram, chat_id

    def texts(self) -> list[str]:
        return [m.text for m in self.telegram.sent if m.chat_id == self.chat_id]

    async def ask(self, text: str) -> str:
        before = len(self.texts())
        self.telegram.inject_command(self.chat_id, text)
        await self.telegram.wait_for(lambda: len(self.texts()) > before, HANG_GUARD_S)
        return self.texts()[before]


def code_in(text: str) -> str:
    found = re.search(r"/confirm (\d{6})", text)
    assert found, text
    return found.group(1)


async def test_model_operations_over_telegram(
    exchange: FakeBinance, telegram: FakeTelegram, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    cash_btc = constant_module(exchange, root, "BTC", 0, 1)
    coin_eth = constant_module(exchange, root, "ETH", 1, 2)
    versions.activate(root, "BTC", cash_btc, reason="initial", at_ms=T0)
    versions.activate(root, "ETH", coin_eth, reason="initial", at_ms=T0)
    coin_btc = constant_module(exchange, root, "BTC", 1, 3)  # saved, not active
    cfg = live_config(
        exchange, tmp_path / "data", COINS, policy="vote", risk={"max_weight_per_coin": 0.45}
    )
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(update={"models_dir": root}),
            "telegram": TelegramConfig(
                enabled=True,
                api_url=telegram.url,
                chat_ids=(OPERATOR, COLLEAGUE),
                per_chat_per_s=200.0,
                global_per_s=200.0,
                poll_timeout_s=1,
                daily_summary_hour=None,
            ),
        }
    )
    secrets = Secrets(telegram_token=DEFAULT_TOKEN)
    services = alerts_factory(cfg, secrets)
    got: dict[str, Any] = {}

    async def grab(controls: Any) -> list[Any]:
        got["controls"] = controls
        return await services(controls)

    daemon = asyncio.create_task(
        run_daemon(cfg, secrets, build_policy, install_signals=False, alerts_factory=grab)
    )
    db = state_path(cfg)
    await wait_ready(cfg.data.dir, daemon)
    operator, colleague, stranger = (Chat(telegram, c) for c in (OPERATOR, COLLEAGUE, STRANGER))
    k = 0

    async def cycle() -> None:
        nonlocal k
        await next_cycle(exchange, db, k, daemon=daemon)
        k += 1

    await cycle()
    await cycle()

    # Strangers are refused every model operation.
    for text in ("/modules", "/audit", "/regime", "/plug ETH", "/unplug ETH", "/confirm 123456"):
        assert await stranger.ask(text) == "Not authorised."

    modules = await operator.ask("/modules")
    lines = modules.splitlines()
    assert lines[0] == "Modules (2)"
    assert lines[1].startswith(f"BTC: {cash_btc}, ready, last weight 0.0% at ")
    assert "validation log return: sam " in modules and "buy and hold " in modules
    assert "last 2 decisions: in BTC 0.0% of the time, flipped at 0.0% of them" in modules
    assert "last 2 decisions: in ETH 100.0% of the time" in modules

    audit = (await operator.ask("/audit 1")).splitlines()
    assert audit[0] == (
        "Guardrail audit: 1 close(s) changed, in the last 2 decisions since 2024-03-01T00:00:00Z"
    )
    assert audit[1].startswith("2024-03-01T00:01:00Z (vote), ")
    assert "  ETH: wanted 50.0% -> allowed 45.0% (max_weight_per_coin)" in audit
    assert await operator.ask("/regime") == "Policy vote has no regime controller."

    refusal = await operator.ask("/retrain DOGE")
    assert "DOGE is not one of the daemon's coins" in refusal and "\n" not in refusal
    assert await operator.ask("/retrain BTC") == "retraining needs [updating] enabled = true"
    assert (await operator.ask("/plug DOGE")).startswith("DOGE is not one of the daemon's coins")

    # /unplug answers what changes and a code; another chat's confirmation is refused, and the
    # code expires three closes later, by the exchange's clock: nothing changed.
    preview = await operator.ask("/unplug eth")
    assert preview.startswith(f"Unplug ETH ({coin_eth}) at the next cycle: the rebalance sells ETH")
    assert "45.0% of equity); the vote splits over 1 module(s) (BTC)." in preview
    code = code_in(preview)
    assert (await colleague.ask(f"/confirm {code}")).startswith("Refused: that code was sent")
    for _ in range(3):
        await cycle()
    assert "expired (2 minutes)" in await operator.ask(f"/confirm {code}")
    assert "ETH: " in await operator.ask("/modules")

    # A wrong code cancels; the right one, in time, unplugs at the next cycle.
    code = code_in(await operator.ask("/unplug ETH"))
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert (await operator.ask(f"/confirm {wrong}")).startswith("Wrong code: /unplug ETH")
    code = code_in(await operator.ask("/unplug ETH"))
    assert "ETH will be unplugged at the next cycle" in await operator.ask(f"/confirm {code}")
    await cycle()
    assert not any(line.startswith("ETH:") for line in (await operator.ask("/modules")).split("\n"))

    # /plug of a named version: a swap, and that version becomes the active one.
    preview = await operator.ask(f"/plug btc {coin_btc}")
    assert preview.startswith(f"Swap BTC: {cash_btc} -> {coin_btc} (validation log return ")
    assert f"{coin_btc} becomes BTC's active version (/rollback undoes it)." in preview
    assert versions.active_model(root, "BTC") == cash_btc  # nothing changed yet
    assert "will be swapped in" in await operator.ask(f"/confirm {code_in(preview)}")
    await got["controls"].host.prepared()
    await cycle()
    await cycle()
    modules = await operator.ask("/modules")
    print(modules)
    lines = modules.splitlines()
    assert lines[0] == "Modules (1)"
    assert lines[1].startswith(f"BTC: {coin_btc}, ready, last weight 100.0%")
    assert "last 2 decisions: in BTC 100.0% of the time" in modules  # this version's only

    daemon.cancel()
    with pytest.raises(asyncio.CancelledError):
        await daemon
    async with await Journal.open(db) as journal:
        decisions = await journal.decisions()
    eth = [dict(d["target"]).get("ETH", 0.0) for d in decisions]
    assert eth[:5] == [pytest.approx(0.5)] * 5 and eth[5:] == [0.0] * 3
