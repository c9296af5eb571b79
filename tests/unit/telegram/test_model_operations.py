"""Model operations over Telegram: /audit, /regime, and the /plug, /unplug confirmation step."""

from __future__ import annotations

import re

import pytest

from bot.control import ControlError
from bot.telegram.commands import NOT_AUTHORISED, TelegramCommands
from config.schema import TelegramConfig
from tests.fakes.telegram import RecordingControls
from tests.unit.telegram.test_commands import OPERATOR, FakeClock, StubClient, message

OTHER_OPERATOR = -100123
STRANGER = 999


@pytest.fixture
def controls() -> RecordingControls:
    return RecordingControls()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def commands(controls: RecordingControls, clock: FakeClock) -> TelegramCommands:
    config = TelegramConfig(chat_ids=(OPERATOR, OTHER_OPERATOR))
    return TelegramCommands(config, "1:x", controls, clock=clock, client=StubClient())  # type: ignore[arg-type]


def last_reply(commands: TelegramCommands, chat: int = OPERATOR) -> str:
    sent = commands._client.bot.sent  # type: ignore[attr-defined]
    return [text for chat_id, text in sent if chat_id == chat][-1]


def code_in(text: str) -> str:
    found = re.search(r"/confirm (\d{6})", text)
    assert found, text
    return found.group(1)


async def ask(commands: TelegramCommands, text: str, chat: int = OPERATOR) -> str:
    await commands.handle(message(chat, text))
    return last_reply(commands, chat)


@pytest.mark.parametrize(
    "text",
    ["/audit", "/audit 3", "/regime", "/plug btc", "/unplug btc", "/confirm 123456", "/modules"],
)
async def test_strangers_are_refused_every_model_operation(
    commands: TelegramCommands, controls: RecordingControls, text: str
) -> None:
    assert await ask(commands, text, STRANGER) == NOT_AUTHORISED
    assert controls.calls == []


async def test_audit_shows_wanted_and_allowed_weights_rules_and_trims(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    text = await ask(commands, "/audit 3")
    assert controls.calls == [("audit", (3,))]
    assert text.splitlines() == [
        "Guardrail audit: 1 close(s) changed, in the last 12 decisions since 2024-01-02T07:45:00Z",
        "2024-01-02T10:30:00Z (vote), 2 order(s)",
        "  BTC: wanted 50.0% -> allowed 45.0% (max_weight_per_coin)",
        "  trimmed BUY ETH: 2 -> 1.5 (cash)",
    ]
    await ask(commands, "/audit")
    assert controls.calls[-1] == ("audit", (5,))


@pytest.mark.parametrize("text", ["/audit 0", "/audit 21", "/audit x", "/audit 1 2"])
async def test_audit_refuses_a_bad_count_in_one_line(
    commands: TelegramCommands, controls: RecordingControls, text: str
) -> None:
    assert await ask(commands, text) == "Usage: /audit [N] (N closes, 1..20; default 5)"
    assert controls.calls == []


async def test_regime_says_plainly_when_the_policy_has_no_controller(
    commands: TelegramCommands,
) -> None:
    assert await ask(commands, "/regime") == "Policy vote has no regime controller."


async def test_regime_shows_exposure_variant_weights_and_features(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    async def regime() -> dict:
        return {
            "policy": "mars+manager",
            "controller": True,
            "state": {
                "ts": 1_704_191_400_000,
                "exposure": 0.62,
                "variants": {"BTC": {"cash": 0.1, "conservative": 0.6, "aggressive": 0.3}},
                "features": {"volatility": 0.031, "breadth": -0.25},
            },
        }

    controls.regime = regime  # type: ignore[method-assign]
    assert (await ask(commands, "/regime")).splitlines() == [
        "Regime (policy mars+manager, 2024-01-02 10:30 UTC)",
        "Manager's gross exposure: 62.0%",
        "Controller's variant weights:",
        "  BTC: conservative 60.0%, aggressive 30.0%, cash 10.0%",
        "Regime features now:",
        "  volatility: +0.031",
        "  breadth: -0.250",
    ]


async def test_plug_changes_nothing_until_the_same_chat_confirms_its_code(
    commands: TelegramCommands, controls: RecordingControls, clock: FakeClock
) -> None:
    text = await ask(commands, "/plug btc btc-7")
    assert text.startswith("Plug BTC: btc-7 joins the vote at the next cycle.")
    assert "within 2 minutes" in text
    assert controls.names() == ["preview_plug"]  # nothing done yet
    clock.now += 119
    assert await ask(commands, f"/confirm {code_in(text)}") == "Plugging BTC (btc-7)."
    assert controls.calls[-1] == ("plug", ("BTC", "btc-7"))
    # one time only
    assert "Nothing waits" in await ask(commands, f"/confirm {code_in(text)}")
    assert controls.names().count("plug") == 1


async def test_unplug_is_done_on_confirmation(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    text = await ask(commands, "/unplug eth")
    assert text.startswith("Unplug ETH at the next cycle")
    assert await ask(commands, f"/confirm {code_in(text)}") == "Unplugging ETH."
    assert controls.names() == ["preview_unplug", "unplug"]


async def test_an_expired_confirmation_is_refused(
    commands: TelegramCommands, controls: RecordingControls, clock: FakeClock
) -> None:
    code = code_in(await ask(commands, "/unplug btc"))
    clock.now += 121
    reply = await ask(commands, f"/confirm {code}")
    assert (
        reply
        == "The confirmation of /unplug BTC expired (2 minutes); nothing changed. Send it again."
    )
    assert "unplug" not in controls.names()


async def test_a_confirmation_from_another_chat_is_refused(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    code = code_in(await ask(commands, "/unplug btc"))
    reply = await ask(commands, f"/confirm {code}", OTHER_OPERATOR)
    assert reply.startswith("Refused: that code was sent to another chat")
    assert "unplug" not in controls.names()
    # ... and the asking chat can still confirm it
    assert await ask(commands, f"/confirm {code}") == "Unplugging BTC."


async def test_a_wrong_code_is_refused_and_cancels_the_request(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    code = code_in(await ask(commands, "/plug eth"))
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert await ask(commands, f"/confirm {wrong}") == (
        "Wrong code: /plug ETH is cancelled, nothing changed. Send it again."
    )
    assert "Nothing waits" in await ask(commands, f"/confirm {code}")
    assert "plug" not in controls.names()


async def test_a_new_request_replaces_the_pending_one(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    first = code_in(await ask(commands, "/plug eth"))
    second = code_in(await ask(commands, "/unplug btc"))
    assert await ask(commands, f"/confirm {second}") == "Unplugging BTC."
    assert "Nothing waits" in await ask(commands, f"/confirm {first}")
    assert controls.names() == ["preview_plug", "preview_unplug", "unplug"]


async def test_a_refused_plug_asks_no_confirmation(
    commands: TelegramCommands, controls: RecordingControls
) -> None:
    controls.fail["preview_plug"] = ControlError(
        "DOGE is not one of the daemon's coins ['BTC', 'ETH']"
    )
    assert (
        await ask(commands, "/plug doge") == "DOGE is not one of the daemon's coins ['BTC', 'ETH']"
    )
    assert "Nothing waits" in await ask(commands, "/confirm 000000")


async def test_confirm_without_a_code_gets_the_usage(commands: TelegramCommands) -> None:
    assert await ask(commands, "/confirm") == (
        "Usage: /confirm CODE (the code /plug or /unplug answered)"
    )


async def test_help_lists_the_model_operations(commands: TelegramCommands) -> None:
    text = await ask(commands, "/help")
    for command in ("/audit [N]", "/regime", "/confirm CODE", "/plug COIN [MODEL_ID]"):
        assert command in text
    assert "/why" not in text
