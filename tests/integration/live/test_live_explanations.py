"""Every live decision of the Crypto Module vote explained, journalled, and asked for by /why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.cli.live_run import alerts_factory, build_policy
from bot.live.daemon import run_daemon, state_path
from bot.store.journal import Journal
from bot.timeframes import MINUTE_MS, ms_to_iso
from config.schema import Secrets, TelegramConfig
from strategies import versions
from strategies.agents.observation import PRICE_FEATURES
from strategies.agents.train import train_cm
from strategies.crypto_module import CryptoModule
from strategies.explain import SIGNAL_INPUT
from strategies.registry import EAM_WEIGHTS, SAM_WEIGHTS, save_crypto_module
from tests.e2e.test_cli import cryptorlpm
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
from tests.integration.live.modules import fake_history
from tests.unit.agents.conftest import COST, TINY, jolted

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

COINS = ("BTC", "ETH")
OPERATOR, STRANGER = 42, 666


def tiny_module(fake: FakeBinance, root: Path, coin: str) -> str:
    """A tiny CM (EAM and SAM, price features only) on the fake's 1m bars, with seeded random
    weights so that its decisions change with the prices; returns its registry id."""
    history, windows = fake_history(fake, coin)
    folder = save_crypto_module(
        root, train_cm(history, windows, TINY, seed=1, cost=COST), exchange="binance"
    )
    module = jolted(CryptoModule.load(folder, f"{coin}/USDT"), 3)
    torch.save(module.model.sam.state_dict(), folder / SAM_WEIGHTS)
    assert module.model.eam is not None
    torch.save(module.model.eam.state_dict(), folder / EAM_WEIGHTS)
    return folder.name


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def texts(telegram: FakeTelegram, chat: int = OPERATOR) -> list[str]:
    return [m.text for m in telegram.sent if m.chat_id == chat]


async def test_each_decision_is_explained_in_state_db_and_why_answers_the_latest(
    fake: FakeBinance, telegram: FakeTelegram, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    for coin in COINS:
        versions.activate(root, coin, tiny_module(fake, root, coin), reason="initial", at_ms=T0)
    cfg = live_config(fake, tmp_path / "data", COINS, policy="vote", max_cycles=3)
    settings = TelegramConfig(
        enabled=True,
        api_url=telegram.url,
        chat_ids=(OPERATOR,),
        per_chat_per_s=200.0,
        global_per_s=200.0,
        poll_timeout_s=1,
        daily_summary_hour=None,
    )
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(update={"models_dir": root}),
            "telegram": settings,
        }
    )
    secrets = Secrets(telegram_token=DEFAULT_TOKEN)
    got: dict[str, Any] = {}
    telegram_services = alerts_factory(cfg, secrets)

    async def services(controls: Any) -> list[Any]:
        got["controls"] = controls
        return await telegram_services(controls)

    daemon = asyncio.create_task(
        run_daemon(cfg, secrets, build_policy, install_signals=False, alerts_factory=services)
    )
    db = state_path(cfg)
    await wait_ready(cfg.data.dir, daemon)
    for k in range(2):
        await next_cycle(fake, db, k, daemon=daemon)

    async with await Journal.open(db) as journal:
        decisions = await journal.decisions()
        explained = await journal.explanations()
    assert [d["ts"] for d in decisions] == [T0, T0 + MINUTE_MS]
    assert [ts for ts, _ in explained] == [T0, T0 + MINUTE_MS]  # every decision
    names = {*PRICE_FEATURES, SIGNAL_INPUT}
    for row in decisions:
        for coin in COINS:
            entry = row["explanation"][coin]
            assert entry["action"] in ("all_cash", "all_coin")
            assert entry["action"] == max(entry["q"], key=entry["q"].get)
            assert {name for name, _ in entry["top"]} == names  # 6 inputs, all kept (top 8)
            assert any(value != 0.0 for _, value in entry["top"])
            assert entry["eam"]["action"] in ("sell", "hold", "buy")
            # the decision itself: the coin's target weight follows the module's action
            wanted = dict(row["target"])[coin]
            assert wanted == (0.5 if entry["action"] == "all_coin" else 0.0)

    why = await got["controls"].why("btc")
    last = decisions[-1]["explanation"]["BTC"]
    assert why["coin"] == "BTC" and why["action"] == last["action"] and why["top"] == last["top"]
    telegram.inject_command(OPERATOR, "/why BTC")
    telegram.inject_command(OPERATOR, "/why DOGE")
    telegram.inject_command(STRANGER, "/why BTC")
    await telegram.wait_for(
        lambda: (
            sum(t.startswith(("BTC at", "no Crypto")) for t in texts(telegram)) == 2
            and texts(telegram, STRANGER)
        )
    )
    answers = texts(telegram)
    btc = next(t for t in answers if t.startswith("BTC at"))
    assert last["action"].replace("_", " ") in btc and last["top"][0][0] in btc
    assert "no Crypto Module for DOGE; plugged: BTC, ETH" in answers
    assert "not authorised" in texts(telegram, STRANGER)[0].lower()

    await next_cycle(fake, db, 2, daemon=daemon)
    await asyncio.wait_for(daemon, HANG_GUARD_S)
    async with await Journal.open(db) as journal:
        assert len(await journal.explanations(start_ms=T0 + MINUTE_MS)) == 2
        third = (await journal.decisions())[-1]["explanation"]["ETH"]

    # the explain command reads the journalled explanations of the state dir
    code, text = await cryptorlpm("explain", str(db.parent), "--coin", "eth")
    assert code == 0, text
    assert "ETH at 1970" not in text and f"ETH at {ms_to_iso(T0 + 2 * MINUTE_MS)}" in text
    assert third["top"][0][0] in text
    code, text = await cryptorlpm(
        "explain", str(db.parent), "--from", ms_to_iso(T0), "--to", ms_to_iso(T0 + 2 * MINUTE_MS)
    )
    assert code == 0, text
    assert "BTC: 3 decisions" in text and "ETH: 3 decisions" in text
    assert (db.parent / "explain" / "explain_BTC.png").exists()
    code, text = await cryptorlpm("explain", str(db.parent), "--coin", "DOGE")
    assert code == 2 and "--coin DOGE: no explained decisions of it" in text
    assert "(coins: BTC, ETH)" in text and "Traceback" not in text
