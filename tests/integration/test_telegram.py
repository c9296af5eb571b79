"""Alerts and commands against the fake Bot API, through python-telegram-bot's real client."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bot.bus import EventBus
from bot.control import ControlError
from bot.events import OrderFilled, PortfolioValued, RiskRefusal
from bot.telegram import TelegramAlerts, TelegramChats, TelegramCommands
from bot.telegram.chart import PNG_SIGNATURE
from bot.telegram.commands import NOT_AUTHORISED
from config.schema import TelegramConfig
from tests.fakes.telegram import FakeTelegram, RecordingControls

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

OPERATOR = 42
STRANGER = 666
GROUP = -4_001_234
SUPERGROUP = -1_002_004_001_234
DAY0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
HOUR = 3_600_000

MakeAlerts = Callable[..., Awaitable[TelegramAlerts]]
MakeCommands = Callable[..., Awaitable[TelegramCommands]]


def settings(fake: FakeTelegram, **overrides: Any) -> TelegramConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "api_url": fake.url,
        "chat_ids": (OPERATOR,),
        "per_chat_per_s": 500.0,
        "global_per_s": 500.0,
        "poll_timeout_s": 1,
        "daily_summary_hour": 0,
    }
    values.update(overrides)
    return TelegramConfig(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def make_alerts(fake: FakeTelegram) -> AsyncIterator[MakeAlerts]:
    made: list[TelegramAlerts] = []

    async def make(token: str | None = None, **overrides: Any) -> TelegramAlerts:
        alerts = TelegramAlerts(
            settings(fake, **overrides),
            token or fake.token,
            backoff_initial_s=0.02,
            backoff_max_s=0.1,
        )
        await alerts.start()
        made.append(alerts)
        return alerts

    yield make
    for alerts in made:
        await alerts.close(flush_timeout_s=0.2)


@pytest.fixture
async def make_commands(fake: FakeTelegram) -> AsyncIterator[MakeCommands]:
    made: list[TelegramCommands] = []

    async def make(controls: RecordingControls, **overrides: Any) -> TelegramCommands:
        commands = TelegramCommands(
            settings(fake, **overrides),
            fake.token,
            controls,
            backoff_initial_s=0.02,
            backoff_max_s=0.1,
        )
        await commands.start()
        made.append(commands)
        await asyncio.wait_for(commands.ready.wait(), timeout=5)
        return commands

    yield make
    for commands in made:
        await commands.close(timeout_s=1.0)


def texts(fake: FakeTelegram, chat_id: int = OPERATOR) -> list[str]:
    return [message.text for message in fake.sent if message.chat_id == chat_id]


# -- alerts ---------------------------------------------------------------------------------------


async def test_fill_refusal_and_error_alerts_arrive_in_order(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts(chat_ids=(OPERATOR, -100200))
    bus = EventBus()
    alerts.attach(bus)
    await bus.publish(OrderFilled(DAY0, "c-1", "BTC/USDT", "buy", 0.0123, 43_210.0, 0.53, "USDT"))
    await bus.publish(RiskRefusal(DAY0, "max_weight", "BTC", 0.6, 0.4, "cap 40%"))
    alerts.error("exchange unreachable")
    await fake.wait_for(lambda: alerts.stats.sent == 6)
    for chat_id in (OPERATOR, -100200):
        first, second, third = texts(fake, chat_id)
        assert first.startswith("BUY 0.0123 BTC/USDT @ 43,210.00, fee 0.53 USDT")
        assert second.startswith("Risk refusal (max_weight) BTC: wanted 0.6 → allowed 0.4")
        assert third == "ERROR: exchange unreachable"


async def test_daily_summary_sends_an_equity_chart(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts(daily_summary_hour=0, alert_fills=False)
    bus = EventBus()
    alerts.attach(bus)
    for hour in range(0, 25, 2):
        if hour == 10:
            await bus.publish(
                OrderFilled(DAY0 + hour * HOUR, "c", "BTC/USDT", "buy", 1, 1, 0, "USDT")
            )
        await bus.publish(PortfolioValued(DAY0 + hour * HOUR + 1, 1_000.0 + hour, 0.0, (), ()))
    photos = await fake.wait_for(lambda: [m for m in fake.sent if m.has_photo])
    assert len(photos) == 1 and len(fake.sent) == 1
    assert photos[0].photo is not None and photos[0].photo.startswith(PNG_SIGNATURE)
    assert photos[0].text.startswith("Daily summary 2024-01-02 00:00 UTC")
    assert "Equity 1,024.00 USDT (+2.40%, +24.00 USDT)" in photos[0].text
    assert "Fills: 1, risk refusals: 0" in photos[0].text


async def test_outage_keeps_messages_and_delivers_them_in_order(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts()
    fake.outage(True)
    alerts.notify("m0")
    await fake.wait_for(lambda: any(call.status == 502 for call in fake.calls))
    durations = []
    for i in range(1, 200):
        start = time.perf_counter()
        alerts.notify(f"m{i}")
        durations.append(time.perf_counter() - start)
    await fake.wait_for(lambda: alerts.stats.retries >= 2)  # the sender keeps retrying
    assert fake.sent == []
    assert alerts.stats.queued == 200
    fake.outage(False)
    await fake.wait_for(lambda: alerts.stats.sent == 200)  # the answers reached the client
    assert texts(fake) == [f"m{i}" for i in range(200)]
    assert alerts.stats.dropped == 0 and alerts.stats.queued == 0
    # Queueing is a synchronous append: even on a loaded machine the median call is far
    # below a millisecond.
    durations.sort()
    assert durations[len(durations) // 2] < 1e-3, durations[len(durations) // 2]


async def test_refused_connections_are_an_outage_too(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts()
    alerts.notify("before")
    await fake.wait_for(lambda: len(fake.sent) == 1)
    await fake.refuse_connections(True)
    alerts.notify("during 1")
    alerts.notify("during 2")
    await fake.wait_for(lambda: alerts.stats.retries >= 2)
    assert len(fake.sent) == 1
    await fake.refuse_connections(False)
    await fake.wait_for(lambda: len(fake.sent) == 3)
    assert texts(fake) == ["before", "during 1", "during 2"]


async def test_full_queue_during_an_outage_drops_the_oldest(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts(queue_size=5)
    fake.outage(True)
    for i in range(12):
        alerts.notify(f"m{i}")
    assert alerts.stats.dropped == 7
    fake.outage(False)
    await fake.wait_for(lambda: alerts.stats.queued == 0)
    assert texts(fake) == [f"m{i}" for i in range(7, 12)]
    assert alerts.stats.sent == 5


async def test_retry_after_of_a_429_is_honoured(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts()
    fake.rate_limit(retry_after=1, times=1)
    alerts.notify("a")
    alerts.notify("b")
    await fake.wait_for(lambda: len(fake.sent) == 2)
    limited = [call for call in fake.calls if call.status == 429]
    assert len(limited) == 1
    assert fake.sent[0].at - limited[0].at >= 0.95
    assert texts(fake) == ["a", "b"]
    assert alerts.stats.retries == 1


async def test_a_message_telegram_refuses_is_skipped_and_the_next_one_sent(
    fake: FakeTelegram, make_alerts: MakeAlerts, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = await make_alerts()
    fake.fail_next(400, "Bad Request: can't parse entities: unsupported start tag at offset 3")
    with caplog.at_level(logging.ERROR, logger="bot.telegram.alerts"):
        alerts.notify("lost")
        alerts.notify("kept")
        await fake.wait_for(lambda: len(fake.sent) == 1)
    assert texts(fake) == ["kept"]
    assert len(fake.calls_of("sendMessage")) == 2  # no retry of the refused one
    assert alerts.stats.failed == 1
    assert any("parse entities" in record.getMessage() for record in caplog.records)


def sends_to(fake: FakeTelegram, chat_id: int) -> int:
    return sum(
        1
        for call in fake.calls
        if call.method in ("sendMessage", "sendPhoto") and call.params.get("chat_id") == chat_id
    )


@pytest.mark.parametrize(
    ("refuse", "said"),
    [
        (FakeTelegram.block_chat, "bot was blocked by the user"),
        (FakeTelegram.forget_chat, "chat not found"),
    ],
    ids=["blocked-by-the-user", "chat-not-found"],
)
async def test_a_chat_that_refuses_messages_is_muted_with_one_line_and_no_retries(
    fake: FakeTelegram,
    make_alerts: MakeAlerts,
    caplog: pytest.LogCaptureFixture,
    refuse: Callable[[FakeTelegram, int], None],
    said: str,
) -> None:
    alerts = await make_alerts(chat_ids=(OPERATOR, GROUP))
    refuse(fake, OPERATOR)
    with caplog.at_level(logging.INFO, logger="bot.telegram"):
        for i in range(5):
            alerts.notify(f"m{i}")
        await fake.wait_for(lambda: alerts.stats.queued == 0)
        alerts.notify("later")
        await fake.wait_for(lambda: alerts.stats.sent == 6)  # counted once answered

    assert texts(fake, GROUP) == [*(f"m{i}" for i in range(5)), "later"]  # the other chat
    assert sends_to(fake, OPERATOR) == 1  # one refused request, then nothing more to that chat
    assert alerts.chats.muted(OPERATOR) and alerts.chats.recipients == (GROUP,)
    assert alerts.stats.failed == 5 and alerts.stats.sent == 6
    lines = [r for r in caplog.records if str(OPERATOR) in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert said in lines[0].getMessage().lower()


async def test_a_group_that_became_a_supergroup_gets_the_alert_at_its_new_id_from_then_on(
    fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    remembered: list[dict[int, int]] = []

    async def remember(migrations: dict[int, int]) -> None:
        remembered.append(migrations)

    config = settings(fake, chat_ids=(GROUP,))
    chats = TelegramChats(config.chat_ids, on_migrated=remember)
    alerts = TelegramAlerts(config, fake.token, chats=chats)
    commands = TelegramCommands(config, fake.token, RecordingControls(), chats=chats)
    fake.migrate_chat(GROUP, SUPERGROUP)
    await alerts.start()
    await commands.start()
    try:
        await asyncio.wait_for(commands.ready.wait(), timeout=5)
        with caplog.at_level(logging.WARNING, logger="bot.telegram"):
            for text in ("first", "second", "third"):
                alerts.notify(text)
            await fake.wait_for(lambda: len(texts(fake, SUPERGROUP)) == 3)
        fake.inject_command(SUPERGROUP, "/pause")  # the operators now write from the new id
        await fake.wait_for(lambda: len(texts(fake, SUPERGROUP)) == 4)
    finally:
        await commands.close(timeout_s=1.0)
        await alerts.close(flush_timeout_s=0.2)

    assert texts(fake, SUPERGROUP) == ["first", "second", "third", "Paused: no new orders."]
    assert sends_to(fake, GROUP) == 1  # the one answered "upgraded", resent to the new id
    assert remembered == [{GROUP: SUPERGROUP}]
    assert alerts.stats.sent == 3 and alerts.stats.failed == 0
    moved = [r.getMessage() for r in caplog.records if "supergroup" in r.getMessage()]
    assert len(moved) == 1 and str(GROUP) in moved[0] and str(SUPERGROUP) in moved[0]


async def test_the_migration_service_message_moves_alerts_before_any_send_fails(
    fake: FakeTelegram,
) -> None:
    config = settings(fake, chat_ids=(GROUP,))
    chats = TelegramChats(config.chat_ids)  # shared, as the daemon wires them
    alerts = TelegramAlerts(config, fake.token, chats=chats)
    commands = TelegramCommands(config, fake.token, RecordingControls(), chats=chats)
    await alerts.start()
    await commands.start()
    try:
        await asyncio.wait_for(commands.ready.wait(), timeout=5)
        fake.migrate_chat(GROUP, SUPERGROUP, announce=True)
        await fake.wait_for(lambda: chats.resolve(GROUP) == SUPERGROUP)
        alerts.notify("after the upgrade")
        await fake.wait_for(lambda: texts(fake, SUPERGROUP))
    finally:
        await commands.close(timeout_s=1.0)
        await alerts.close(flush_timeout_s=0.2)
    assert texts(fake, SUPERGROUP) == ["after the upgrade"]
    assert sends_to(fake, GROUP) == 0


async def test_a_rejected_token_stops_the_alerts_with_one_line(
    fake: FakeTelegram, make_alerts: MakeAlerts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="bot.telegram"):
        alerts = await make_alerts(token="111111111:AAWrongTokenThatTelegramRefuses_xyz")
        for i in range(3):
            alerts.notify(f"m{i}")
        await fake.wait_for(lambda: alerts.stats.queued == 0)
        alerts.notify("later")
    assert len(fake.calls_of("sendMessage")) == 1 and fake.sent == []
    assert alerts.stats.failed == 3 and alerts.stats.queued == 0
    assert [r.getMessage() for r in caplog.records if "token" in r.getMessage()] == [
        "telegram: the bot token was rejected (401/404); no alerts will be sent "
        "(check CRYPTORLPM_TELEGRAM_TOKEN)"
    ]


async def test_sends_to_one_chat_are_spaced_by_the_rate(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts(per_chat_per_s=20.0)
    for i in range(5):
        alerts.notify(f"m{i}")
    await fake.wait_for(lambda: len(fake.sent) == 5)
    times = [message.at for message in fake.sent]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.045


async def test_close_flushes_the_stop_message(fake: FakeTelegram) -> None:
    alerts = TelegramAlerts(settings(fake), fake.token)
    await alerts.start()
    alerts.started("paper, BTC")
    alerts.stopped("stopped by /stop")
    await alerts.close(flush_timeout_s=2.0)
    assert texts(fake) == ["cryptorlpm started\npaper, BTC", "cryptorlpm stopped\nstopped by /stop"]


async def test_alerts_from_another_thread_are_delivered(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts()
    worker = threading.Thread(target=alerts.notify, args=("from a worker",))
    worker.start()
    worker.join()
    await fake.wait_for(lambda: texts(fake) == ["from a worker"])


# -- commands -------------------------------------------------------------------------------------


async def test_command_from_an_unknown_chat_is_refused(
    fake: FakeTelegram, make_commands: MakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    controls = RecordingControls()
    await make_commands(controls)
    with caplog.at_level(logging.WARNING, logger="bot.telegram.commands"):
        fake.inject_command(STRANGER, "/stop")
        await fake.wait_for(lambda: texts(fake, STRANGER))
    assert texts(fake, STRANGER) == [NOT_AUTHORISED]
    assert controls.calls == []
    assert any(str(STRANGER) in record.getMessage() for record in caplog.records)


async def test_pause_then_resume_call_the_controls(
    fake: FakeTelegram, make_commands: MakeCommands
) -> None:
    controls = RecordingControls()
    await make_commands(controls)
    fake.inject_command(OPERATOR, "/pause")
    fake.inject_command(OPERATOR, "/resume")
    await fake.wait_for(lambda: len(texts(fake)) == 2)
    assert controls.names() == ["pause", "resume"]
    assert texts(fake) == ["Paused: no new orders.", "Resumed."]


async def test_why_answers_the_inputs_that_drove_the_coin_s_latest_decision(
    fake: FakeTelegram, make_commands: MakeCommands
) -> None:
    controls = RecordingControls()
    await make_commands(controls)
    fake.inject_command(OPERATOR, "/why btc")
    fake.inject_command(OPERATOR, "/why")
    fake.inject_command(STRANGER, "/why BTC")
    await fake.wait_for(lambda: len(texts(fake)) == 2 and texts(fake, STRANGER))
    answer = texts(fake)[0]
    assert answer.startswith("BTC at 2024-01-02") and "all coin" in answer
    assert answer.index("BTC:exchange_outflow +0.1800") < answer.index("close -0.0400")
    assert "EAM signal: buy" in answer and "btc-1" in answer
    assert texts(fake)[1] == "Usage: /why COIN"
    assert texts(fake, STRANGER) == [NOT_AUTHORISED]
    assert controls.calls == [("why", ("BTC",))]  # the stranger reached nothing
    controls.fail["why"] = ControlError("no Crypto Module for DOGE; plugged: BTC")
    fake.inject_command(OPERATOR, "/why DOGE")
    await fake.wait_for(lambda: len(texts(fake)) == 3)
    assert texts(fake)[2] == "no Crypto Module for DOGE; plugged: BTC"


async def test_stop_needs_a_confirmation(fake: FakeTelegram, make_commands: MakeCommands) -> None:
    controls = RecordingControls()
    await make_commands(controls)
    fake.inject_command(OPERATOR, "/stop")
    await fake.wait_for(lambda: len(texts(fake)) == 1)
    assert controls.calls == []
    assert "send /stop confirm within 60 s" in texts(fake)[0].lower()
    fake.inject_command(OPERATOR, "/stop confirm")
    await fake.wait_for(lambda: len(texts(fake)) == 2)
    assert controls.names() == ["stop"]


async def test_each_update_is_handled_once(fake: FakeTelegram, make_commands: MakeCommands) -> None:
    controls = RecordingControls()
    commands = await make_commands(controls)
    for coin in ("btc", "eth", "sol"):
        fake.inject_command(OPERATOR, f"/retrain {coin}")
    await fake.wait_for(lambda: len(texts(fake)) == 3)
    polls = len(fake.calls_of("getUpdates"))
    await fake.wait_for(lambda: len(fake.calls_of("getUpdates")) >= polls + 1)
    await fake.wait_for(lambda: fake.pending_updates == 0)
    assert controls.calls == [("retrain", ("BTC",)), ("retrain", ("ETH",)), ("retrain", ("SOL",))]
    assert commands.handled == 3


async def test_commands_sent_while_offline_are_dropped(
    fake: FakeTelegram, make_commands: MakeCommands
) -> None:
    fake.inject_command(OPERATOR, "/resume")
    controls = RecordingControls()
    await make_commands(controls)
    fake.inject_command(OPERATOR, "/status")
    await fake.wait_for(lambda: texts(fake))
    assert controls.names() == ["status"]


async def test_commands_work_again_after_an_outage(
    fake: FakeTelegram, make_commands: MakeCommands
) -> None:
    controls = RecordingControls()
    await make_commands(controls)
    fake.outage(True)
    await fake.wait_for(lambda: len([c for c in fake.calls if c.status == 502]) >= 2)
    fake.inject_command(OPERATOR, "/status")
    fake.outage(False)
    await fake.wait_for(lambda: texts(fake))
    assert texts(fake)[0].startswith("Status: running")


async def test_a_webhook_left_set_is_deleted_at_start_and_commands_work(
    fake: FakeTelegram, make_commands: MakeCommands
) -> None:
    fake.set_webhook("https://old-deployment.example.org/hook")
    controls = RecordingControls()
    await make_commands(controls)
    fake.inject_command(OPERATOR, "/status")
    await fake.wait_for(lambda: texts(fake))
    assert controls.names() == ["status"] and fake.webhook_url == ""
    assert not any(call.status == 409 for call in fake.calls_of("getUpdates"))


async def test_a_webhook_set_while_polling_is_deleted_and_the_pending_command_is_kept(
    fake: FakeTelegram, make_commands: MakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    controls = RecordingControls()
    await make_commands(controls)
    with caplog.at_level(logging.WARNING, logger="bot.telegram.commands"):
        fake.set_webhook("https://other-deployment.example.org/hook")
        fake.inject_command(OPERATOR, "/pause")  # sent while the webhook is set
        await fake.wait_for(lambda: texts(fake))
    assert controls.names() == ["pause"]
    assert any(call.status == 409 for call in fake.calls_of("getUpdates"))
    deletes = fake.calls_of("deleteWebhook")
    assert len(deletes) == 2 and str(deletes[1].params["drop_pending_updates"]).lower() == "false"
    assert any("webhook is set" in r.getMessage() for r in caplog.records)


async def test_close_lets_a_running_command_finish_its_reply(fake: FakeTelegram) -> None:
    class SlowControls(RecordingControls):
        async def pause(self) -> str:
            await asyncio.sleep(0.3)
            return await super().pause()

    controls = SlowControls()
    commands = TelegramCommands(settings(fake), fake.token, controls)
    await commands.start()
    await asyncio.wait_for(commands.ready.wait(), timeout=5)
    fake.inject_command(OPERATOR, "/pause")
    await fake.wait_for(lambda: commands.handled == 1)
    await commands.close(timeout_s=2.0)
    assert texts(fake) == ["Paused: no new orders."]
    assert fake.pending_updates == 0  # close confirmed the update: a restart will not see it


# -- secrets --------------------------------------------------------------------------------------


async def test_the_token_never_appears_in_any_log_record(
    fake: FakeTelegram,
    make_alerts: MakeAlerts,
    make_commands: MakeCommands,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong_token = "111111111:AAWrongTokenThatTelegramRefuses_xyz"
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "telegram"):  # the chattiest levels, on purpose
        caplog.set_level(logging.DEBUG, logger=name)
    controls = RecordingControls()
    controls.fail["balance"] = RuntimeError("boom")
    alerts = await make_alerts()
    await make_commands(controls)
    bus = EventBus()
    alerts.attach(bus)
    await bus.publish(OrderFilled(DAY0, "c-1", "BTC/USDT", "sell", 0.5, 43_000.0, 1.0, "USDT"))
    for text in ("/status", "/balance", "/stop"):
        fake.inject_command(OPERATOR, text)
    fake.inject_command(STRANGER, "/pause")
    await fake.wait_for(lambda: len(fake.sent) == 5)
    fake.rate_limit(retry_after=1)
    fake.fail_next(400, "Bad Request: message is too long")
    alerts.notify("flood")
    alerts.notify("refused")
    fake.outage(True)
    alerts.notify("outage")
    await asyncio.sleep(0.2)
    fake.outage(False)
    refused = await make_alerts(token=wrong_token)  # answered 401 Unauthorized
    refused.notify("never delivered")
    await fake.wait_for(lambda: refused.stats.failed == 1 and alerts.stats.queued == 0, 5)

    assert any("httpx" in record.name for record in caplog.records)
    for record in caplog.records:
        for secret in (fake.token, wrong_token):
            assert secret not in record.getMessage(), record.name
            assert secret not in (record.exc_text or ""), record.name
    assert fake.token not in caplog.text and wrong_token not in caplog.text


# -- the fake itself ------------------------------------------------------------------------------


async def test_fake_accepts_json_form_and_query_bodies_with_telegrams_errors(
    fake: FakeTelegram,
) -> None:
    base = f"{fake.url}/bot{fake.token}"
    async with httpx.AsyncClient() as client:
        as_json = await client.post(f"{base}/sendMessage", json={"chat_id": 1, "text": "json"})
        as_form = await client.post(f"{base}/sendMessage", data={"chat_id": "2", "text": "form"})
        as_query = await client.get(f"{base}/sendMessage", params={"chat_id": 3, "text": "q"})
        assert [r.json()["ok"] for r in (as_json, as_form, as_query)] == [True, True, True]
        assert [(m.chat_id, m.text) for m in fake.sent] == [(1, "json"), (2, "form"), (3, "q")]

        wrong = await client.post(f"{fake.url}/bot1:nope/getMe")
        assert wrong.status_code == 401
        assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        unknown = await client.post(f"{base}/sendSticker")
        assert unknown.status_code == 404
        empty = await client.post(f"{base}/sendMessage", json={"chat_id": 1, "text": ""})
        assert empty.status_code == 400 and empty.json()["error_code"] == 400

        fake.rate_limit(retry_after=7)
        limited = await client.post(f"{base}/sendMessage", json={"chat_id": 1, "text": "x"})
        assert limited.status_code == 429
        assert limited.json()["parameters"] == {"retry_after": 7}

        fake.outage(True)
        down = await client.post(f"{base}/getMe")
        assert down.status_code == 502 and "Bad Gateway" in down.text
        fake.outage(False)


async def test_fake_long_polls_honours_offset_and_limit(fake: FakeTelegram) -> None:
    base = f"{fake.url}/bot{fake.token}"
    async with httpx.AsyncClient(timeout=90) as client:
        poll = asyncio.create_task(client.post(f"{base}/getUpdates", json={"timeout": 60}))
        await fake.wait_for(lambda: fake.calls_of("getUpdates"))  # the poll is waiting
        assert not poll.done()
        first = fake.inject_command(OPERATOR, "/status")
        answer = (await asyncio.wait_for(poll, 60)).json()["result"]
        assert [u["update_id"] for u in answer] == [first]
        entity = answer[0]["message"]["entities"][0]
        assert entity == {"type": "bot_command", "offset": 0, "length": len("/status")}

        second = fake.inject_command(OPERATOR, "/balance")
        third = fake.inject_command(OPERATOR, "/weights")
        form = {"offset": str(first + 1), "limit": "1"}
        limited = await client.post(f"{base}/getUpdates", data=form)
        assert [u["update_id"] for u in limited.json()["result"]] == [second]
        rest = await client.post(f"{base}/getUpdates", json={"offset": second + 1})
        assert [u["update_id"] for u in rest.json()["result"]] == [third]
        assert fake.pending_updates == 1


async def test_a_guardrail_working_as_configured_is_not_alerted_but_a_real_refusal_is(
    fake: FakeTelegram, make_alerts: MakeAlerts
) -> None:
    alerts = await make_alerts(daily_summary_hour=0)
    bus = EventBus()
    alerts.attach(bus)
    await bus.publish(PortfolioValued(DAY0 + 1, 1_000.0, 0.0, (), ()))
    for hour in range(3):  # three decisions, each capped and scaled as configured
        ts = DAY0 + hour * HOUR
        await bus.publish(RiskRefusal(ts, "max_weight_per_coin", "BTC", 0.6, 0.5, "cap 50%"))
        await bus.publish(RiskRefusal(ts, "min_cash", "BTC", 0.5, 0.45, "keep 10% in USDT"))
    await bus.publish(RiskRefusal(DAY0 + 3 * HOUR, "stale_data", "ETH", 3.0, 2.0, "no bar"))
    await bus.publish(PortfolioValued(DAY0 + 25 * HOUR, 1_000.0, 0.0, (), ()))
    await fake.wait_for(lambda: len(fake.sent) == 2)
    refusal, summary = fake.sent
    assert refusal.text.startswith("Risk refusal (stale_data) ETH")
    assert "risk refusals: 1" in summary.text
    assert not any("max_weight_per_coin" in m.text or "min_cash" in m.text for m in fake.sent)
