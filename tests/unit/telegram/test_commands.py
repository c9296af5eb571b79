"""Command dispatch: the chat-id guard, the /stop confirmation, arguments, errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from telegram import Update

from bot.control import ControlError
from bot.telegram.commands import NOT_AUTHORISED, TelegramCommands
from config.schema import TelegramConfig
from tests.fakes.telegram import RecordingControls

OPERATOR = 42


class StubBot:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def send_message(self, chat_id: int, text: str) -> None:
        self.sent.append((chat_id, text))


class StubClient:
    """Stands in for BotClient: the commands only need ``bot.send_message`` to reply."""

    def __init__(self) -> None:
        self.bot = StubBot()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def message(chat_id: int, text: str, update_id: int = 1) -> Update:
    data: dict[str, Any] = {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_704_067_200,
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "op"},
            "text": text,
        },
    }
    return Update.de_json(data, None)


@pytest.fixture
def controls() -> RecordingControls:
    return RecordingControls()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def commands(controls: RecordingControls, clock: FakeClock) -> TelegramCommands:
    config = TelegramConfig(chat_ids=(OPERATOR, -100123))
    return TelegramCommands(config, "1:x", controls, clock=clock, client=StubClient())  # type: ignore[arg-type]


def replies(commands: TelegramCommands) -> list[tuple[int, str]]:
    return commands._client.bot.sent  # type: ignore[attr-defined]


async def test_unknown_chat_is_refused_logged_and_never_reaches_the_controls(
    commands: TelegramCommands, controls: RecordingControls, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.telegram.commands"):
        await commands.handle(message(999, "/pause"))
    assert controls.calls == []
    assert replies(commands) == [(999, NOT_AUTHORISED)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "999" in warnings[0].getMessage()


async def test_authorised_chats_are_obeyed(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    await commands.handle(message(OPERATOR, "/pause"))
    await commands.handle(message(-100123, "/resume@cryptorlpm_test_bot"))
    assert controls.names() == ["pause", "resume"]
    assert replies(commands) == [(OPERATOR, "Paused: no new orders."), (-100123, "Resumed.")]


async def test_stop_needs_a_confirmation_within_the_window(
    commands: TelegramCommands, controls: RecordingControls, clock: FakeClock
) -> None:
    await commands.handle(message(OPERATOR, "/stop"))
    assert controls.calls == []
    assert "/stop confirm within 60 s" in replies(commands)[-1][1]
    clock.now += 59
    await commands.handle(message(OPERATOR, "/stop confirm"))
    assert controls.names() == ["stop"]
    assert replies(commands)[-1][1] == "Stopping after the current cycle."


async def test_a_late_or_unasked_confirmation_stops_nothing(
    commands: TelegramCommands, controls: RecordingControls, clock: FakeClock
) -> None:
    await commands.handle(message(OPERATOR, "/stop confirm"))
    await commands.handle(message(OPERATOR, "/stop"))
    clock.now += 61
    await commands.handle(message(OPERATOR, "/stop confirm"))
    await commands.handle(message(OPERATOR, "/stop now"))
    assert controls.calls == []
    assert "send /stop first" in replies(commands)[-2][1]
    assert replies(commands)[-1][1].startswith("Usage")


async def test_another_chat_cannot_confirm_a_stop(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    await commands.handle(message(OPERATOR, "/stop"))
    await commands.handle(message(-100123, "/stop confirm"))
    assert controls.calls == []


async def test_coin_arguments_are_passed_upper_case(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    for text in ("/retrain btc", "/plug eth", "/plug sol sol-7", "/unplug xrp", "/rollback BTC"):
        await commands.handle(message(OPERATOR, text))
    assert controls.calls == [
        ("retrain", ("BTC",)),
        ("preview_plug", ("ETH", None)),
        ("preview_plug", ("SOL", "sol-7")),
        ("preview_unplug", ("XRP",)),
        ("rollback", ("BTC",)),
    ]


async def test_missing_arguments_get_the_usage(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    await commands.handle(message(OPERATOR, "/retrain"))
    await commands.handle(message(OPERATOR, "/plug a b c"))
    assert controls.calls == []
    assert [text for _, text in replies(commands)] == [
        "Usage: /retrain COIN",
        "Usage: /plug COIN [MODEL_ID]",
    ]


async def test_read_commands_reply_formatted_answers(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    for text in ("/status", "/balance", "/weights", "/modules", "/help"):
        await commands.handle(message(OPERATOR, text))
    texts = [text for _, text in replies(commands)]
    assert texts[0].startswith("Status: running")
    assert "BTC 0.1 @ 43,210.00 = 4,321.00 USDT (43.2%)" in texts[1]
    assert "BTC: target 50.0%, actual 43.0%" in texts[2]
    assert texts[3].splitlines()[1] == "BTC: btc-1, ready, last weight 50.0%"
    assert "/stop" in texts[4]


async def test_control_errors_are_replied_as_is(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    controls.fail["preview_plug"] = ControlError("BTC is already plugged")
    await commands.handle(message(OPERATOR, "/plug btc"))
    assert replies(commands)[-1] == (OPERATOR, "BTC is already plugged")


async def test_unexpected_errors_reply_briefly_and_log_the_traceback(
    commands: TelegramCommands, controls: RecordingControls, caplog: pytest.LogCaptureFixture
) -> None:
    controls.fail["status"] = RuntimeError("database is locked")
    with caplog.at_level(logging.ERROR, logger="bot.telegram.commands"):
        await commands.handle(message(OPERATOR, "/status"))
    reply = replies(commands)[-1][1]
    assert "internal error" in reply and "database is locked" not in reply
    assert any(r.exc_info for r in caplog.records)


async def test_unknown_commands_and_plain_text(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    await commands.handle(message(OPERATOR, "/moon"))
    await commands.handle(message(OPERATOR, "hello"))
    assert replies(commands) == [(OPERATOR, "Unknown command /moon; send /help for the list.")]
    assert controls.calls == []
