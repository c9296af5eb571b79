"""The token never reaches a log record, whatever logs it."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from pydantic import SecretStr
from telegram.error import NetworkError, RetryAfter

from bot.telegram.transport import (
    REDACTOR,
    BotClient,
    TokenRedactor,
    brief,
    guard_loggers,
    retry_after_s,
)

TOKEN = "987654321:AAUnitTestTokenThatMustNeverBeLogged"


def test_redactor_cleans_message_arguments_and_traceback() -> None:
    redactor = TokenRedactor()
    redactor.add(TOKEN)
    try:
        raise ValueError(f"bad url https://api.telegram.org/bot{TOKEN}/getMe")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "httpx",
            logging.INFO,
            __file__,
            1,
            "HTTP Request: POST %s",
            (f"x/bot{TOKEN}/y",),
            sys.exc_info(),
        )
    assert redactor.filter(record)
    assert TOKEN not in record.getMessage()
    assert "/bot<redacted>/y" in record.getMessage()
    assert record.exc_text and TOKEN not in record.exc_text


def test_any_bot_url_is_redacted_even_an_unregistered_token() -> None:
    assert TokenRedactor().redact("GET /bot111:abc-DEF_9/sendMessage") == (
        "GET /bot<redacted>/sendMessage"
    )


def test_building_a_client_logs_no_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = BotClient("http://127.0.0.1:9", SecretStr(TOKEN))
    assert TOKEN not in repr(client)
    assert caplog.records, "PTB logs its base URL at DEBUG: the redactor must have seen it"
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert REDACTOR in logging.getLogger("telegram.Bot").filters


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="CRYPTORLPM_TELEGRAM_TOKEN"):
        BotClient("http://127.0.0.1:9", SecretStr(""))


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_retry_after_in_seconds() -> None:
    assert retry_after_s(RetryAfter(3)) == 3.0
    assert retry_after_s(RetryAfter(timedelta(seconds=1.5))) == 1.5


def test_gateway_error_pages_are_logged_once_briefly_not_as_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard_loggers()
    caplog.set_level(logging.INFO)
    try:
        raise ValueError("Expecting value")
    except ValueError:
        logging.getLogger("telegram.request.BaseRequest").exception(
            'Can not load invalid JSON data: "%s"', "<html>502 Bad Gateway</html>"
        )
    assert caplog.records == []
    error = NetworkError("Bad Gateway (502). Parsing the server response b'<html>...' failed")
    assert brief(error) == "NetworkError: Bad Gateway (502)"
    assert len(brief(NetworkError("x" * 500))) == 160
