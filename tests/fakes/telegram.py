"""A fake Telegram Bot API on 127.0.0.1 that answers what python-telegram-bot (and others) send.

Route: ``/bot<token>/<method>``, GET or POST; bodies form-urlencoded, JSON or multipart (files).
Methods: ``getMe``, ``sendMessage``, ``sendPhoto``, ``getUpdates`` (``offset`` confirms earlier
updates, ``limit``, long-poll ``timeout``; a newer poll ends a waiting one with 409 as Telegram
does), ``setWebhook``, ``deleteWebhook`` (``drop_pending_updates``), ``getWebhookInfo``,
``setMyCommands``, ``answerCallbackQuery``. Answers have the real shapes: ``{"ok": true, "result":
..}`` or ``{"ok": false, "error_code": N, "description": ..}``, 429 with
``parameters.retry_after``, 401 for an unknown token, 404 for an unknown method, 502 with an HTML
page (as the gateway sends it) during an outage.

The chat-level answers a running bot meets, with Telegram's texts:

* a user who blocked the bot: 403 ``Forbidden: bot was blocked by the user``
  (:meth:`FakeTelegram.block_chat`);
* a chat the bot cannot see: 400 ``Bad Request: chat not found`` (:meth:`FakeTelegram.forget_chat`);
* a group that became a supergroup: 400 ``Bad Request: group chat was upgraded to a supergroup
  chat`` with ``parameters.migrate_to_chat_id`` for sends to the old id; the new id works, and
  optionally the old group's service message with ``migrate_to_chat_id`` is queued as an update
  (:meth:`FakeTelegram.migrate_chat`);
* ``getUpdates`` while a webhook is set: 409 ``Conflict: can't use getUpdates method while webhook
  is active; use deleteWebhook to delete the webhook first`` (also ending a poll that was waiting
  when the webhook was set) until ``deleteWebhook`` (:meth:`FakeTelegram.set_webhook`).

Test helpers: :meth:`FakeTelegram.inject_command`, :attr:`FakeTelegram.sent`,
:meth:`FakeTelegram.outage`, :meth:`FakeTelegram.refuse_connections`,
:meth:`FakeTelegram.rate_limit`, :meth:`FakeTelegram.fail_next`, :meth:`FakeTelegram.wait_for`
and the chat helpers above.
The fake never logs (access log off), so a test can prove the client never logs the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web

DEFAULT_TOKEN = "123456789:AAFakeTokenForTests_abcdefghijklmnop"
_ROUTE = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")
_SEND_METHODS = ("sendMessage", "sendPhoto")
_INT_FIELDS = ("chat_id", "offset", "limit", "timeout", "message_id")
_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>"
)
_POLL_TICK_S = 0.005
_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)
_WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
    "the webhook first"
)
BLOCKED = "Forbidden: bot was blocked by the user"
CHAT_NOT_FOUND = "Bad Request: chat not found"
UPGRADED = "Bad Request: group chat was upgraded to a supergroup chat"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message or photo the fake accepted. ``text`` is the caption for a photo."""

    method: str
    chat_id: int
    text: str
    has_photo: bool
    photo: bytes | None
    at: float  # time.monotonic() when received


@dataclass(slots=True)
class ApiCall:
    """One request the fake answered: method, decoded parameters, HTTP status."""

    method: str
    params: dict[str, Any]
    status: int = 0
    at: float = field(default_factory=time.monotonic)


class FakeTelegram:
    """The fake server. ``async with FakeTelegram() as fake:``; point a client at ``fake.url``
    (the API base, e.g. ``http://127.0.0.1:PORT``) with ``fake.token``."""

    def __init__(self, token: str = DEFAULT_TOKEN, *, username: str = "cryptorlpm_test_bot"):
        self.token = token
        self.bot_user = {
            "id": int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1,
            "is_bot": True,
            "first_name": "cryptorlpm",
            "username": username,
        }
        self.sent: list[SentMessage] = []
        self.calls: list[ApiCall] = []
        self.commands: list[dict[str, Any]] = []
        self.url = ""
        self._updates: list[dict[str, Any]] = []  # not yet confirmed, ascending update_id
        self._update_ids = itertools.count(100_000)
        self._message_ids = itertools.count(1)
        self._poll_generation = 0
        self._closing = False
        self._down = False
        self._refusing = False
        self._injected: list[list[Any]] = []  # [status, times, description, retry_after, methods]
        self._chat_errors: dict[int, tuple[int, str, dict[str, Any] | None]] = {}
        self.webhook_url = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeTelegram:
        """Listen on a free port of 127.0.0.1; sets :attr:`url`."""
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await self._listen()
        host, self._port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{self._port}"
        return self

    async def close(self) -> None:
        """Stop the server; waiting long polls are answered first."""
        self._closing = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        await self._site.start()

    # -- helpers for tests ------------------------------------------------------------------------

    def inject_command(
        self, chat_id: int, text: str, *, user_id: int | None = None, chat_type: str = "private"
    ) -> int:
        """Queue a message update carrying ``text`` (a ``bot_command`` entity covers its first
        word); returns its ``update_id``."""
        command = text.split()[0] if text.split() else text
        user = {"id": user_id or abs(chat_id), "is_bot": False, "first_name": "operator"}
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": chat_type},
            "from": user,
            "text": text,
        }
        if command.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, "message": message})
        return update_id

    def outage(self, on: bool) -> None:
        """While on, every request is answered 502 Bad Gateway (an HTML page, as nginx sends)."""
        self._down = on

    async def refuse_connections(self, on: bool) -> None:
        """While on, the port is closed (connection refused) and requests arriving on
        connections opened before are cut without an answer."""
        if on and not self._refusing:
            self._refusing = True
            if self._site is not None:
                await self._site.stop()
                self._site = None
        elif not on and self._refusing:
            self._refusing = False
            await self._listen()

    def rate_limit(self, retry_after: int, times: int = 1) -> None:
        """Answer the next ``times`` sends 429 "Too Many Requests: retry after N"."""
        description = f"Too Many Requests: retry after {retry_after}"
        self._injected.append([429, times, description, retry_after, _SEND_METHODS])

    def fail_next(
        self,
        status: int,
        description: str,
        times: int = 1,
        methods: Iterable[str] = _SEND_METHODS,
    ) -> None:
        """Answer the next ``times`` calls of ``methods`` with ``status`` and ``description``."""
        self._injected.append([status, times, description, None, tuple(methods)])

    def block_chat(self, chat_id: int, description: str = BLOCKED) -> None:
        """Answer every send to ``chat_id`` 403 (a user who blocked the bot; for a group, pass
        ``"Forbidden: bot was kicked from the group chat"``)."""
        self._chat_errors[chat_id] = (403, description, None)

    def forget_chat(self, chat_id: int) -> None:
        """Answer every send to ``chat_id`` 400 "Bad Request: chat not found"."""
        self._chat_errors[chat_id] = (400, CHAT_NOT_FOUND, None)

    def migrate_chat(self, old: int, new: int, *, announce: bool = False) -> None:
        """Group ``old`` became supergroup ``new``: sends to ``old`` are answered 400 with
        ``migrate_to_chat_id``; with ``announce`` the old group's service message carrying
        ``migrate_to_chat_id`` is queued as an update, as Telegram sends it."""
        self._chat_errors[old] = (400, UPGRADED, {"migrate_to_chat_id": new})
        self._chat_errors.pop(new, None)
        if announce:
            message = {
                "message_id": next(self._message_ids),
                "date": int(time.time()),
                "chat": {"id": old, "type": "group", "title": "operators"},
                "from": {"id": 1, "is_bot": False, "first_name": "operator"},
                "migrate_to_chat_id": new,
            }
            self._updates.append({"update_id": next(self._update_ids), "message": message})

    def set_webhook(self, url: str) -> None:
        """Set a webhook (as another deployment would): ``getUpdates`` answers 409 until
        ``deleteWebhook``, and a poll waiting now ends with that 409."""
        self.webhook_url = url

    def calls_of(self, method: str) -> list[ApiCall]:
        """Every call of ``method`` so far."""
        return [call for call in self.calls if call.method == method]

    @property
    def pending_updates(self) -> int:
        """Updates not confirmed yet by an ``offset``."""
        return len(self._updates)

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 120.0) -> T:
        """Wait until ``predicate()`` is truthy and return it. ``timeout`` only guards against a
        hung test (``TimeoutError``); a loaded machine is slow, not wrong."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.005)

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._refusing:  # a connection opened before the port closed: cut it
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)
        match = _ROUTE.match(request.path)
        if match is None:
            return _error(404, "Not Found")
        method = match["method"]
        params, files = await _read_params(request)
        call = ApiCall(method, params)
        self.calls.append(call)
        response = await self._answer(match["token"], method, params, files)
        call.status = response.status
        return response

    async def _answer(
        self, token: str, method: str, params: dict[str, Any], files: dict[str, bytes]
    ) -> web.Response:
        if self._down:
            return web.Response(status=502, text=_BAD_GATEWAY_HTML, content_type="text/html")
        if token != self.token:
            return _error(401, "Unauthorized")
        injected = self._take_injected(method)
        if injected is not None:
            return injected
        handler = {
            "getMe": self._get_me,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "getUpdates": self._get_updates,
            "deleteWebhook": self._delete_webhook,
            "setWebhook": self._set_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "answerCallbackQuery": self._answer_callback_query,
        }.get(method)
        if handler is None:
            return _error(404, "Not Found")
        return await handler(params, files)

    def _take_injected(self, method: str) -> web.Response | None:
        for entry in self._injected:
            status, times, description, retry_after, methods = entry
            if method not in methods:
                continue
            entry[1] = times - 1
            if entry[1] <= 0:
                self._injected.remove(entry)
            parameters = {"retry_after": retry_after} if retry_after is not None else None
            return _error(status, description, parameters)
        return None

    async def _get_me(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        return _ok(self.bot_user)

    def _message(self, chat_id: int, **extra: Any) -> dict[str, Any]:
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
            "from": self.bot_user,
            **extra,
        }

    def _chat_error(self, chat_id: Any) -> web.Response | None:
        try:
            refusal = self._chat_errors.get(int(chat_id))
        except (TypeError, ValueError):
            return _error(400, CHAT_NOT_FOUND)
        return None if refusal is None else _error(*refusal)

    async def _send_message(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        chat_id, text = params.get("chat_id"), params.get("text")
        if chat_id is None:
            return _error(400, "Bad Request: chat_id is empty")
        if (refused := self._chat_error(chat_id)) is not None:
            return refused
        if not text:
            return _error(400, "Bad Request: message text is empty")
        if len(str(text)) > 4096:
            return _error(400, "Bad Request: message is too long")
        chat_id = int(chat_id)
        self.sent.append(
            SentMessage("sendMessage", chat_id, str(text), False, None, time.monotonic())
        )
        return _ok(self._message(chat_id, text=str(text)))

    async def _send_photo(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        chat_id = params.get("chat_id")
        if chat_id is None:
            return _error(400, "Bad Request: chat_id is empty")
        if (refused := self._chat_error(chat_id)) is not None:
            return refused
        photo = files.get("photo")
        if photo is None:
            return _error(400, "Bad Request: there is no photo in the request")
        caption = str(params.get("caption") or "")
        if len(caption) > 1024:
            return _error(400, "Bad Request: message caption is too long")
        chat_id = int(chat_id)
        self.sent.append(SentMessage("sendPhoto", chat_id, caption, True, photo, time.monotonic()))
        size = {"file_id": "photo-1", "file_unique_id": "u1", "width": 600, "height": 300}
        return _ok(self._message(chat_id, photo=[size], caption=caption))

    async def _get_updates(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        if self.webhook_url:
            return _error(409, _WEBHOOK_CONFLICT)
        offset = params.get("offset")
        limit = max(1, min(100, int(params.get("limit") or 100)))
        timeout = float(params.get("timeout") or 0)
        if offset is not None and int(offset) < 0:
            keep = -int(offset)
            self._updates = self._updates[-keep:] if keep else []
        elif offset is not None:  # confirms every update below it
            self._updates = [u for u in self._updates if u["update_id"] >= int(offset)]
        self._poll_generation += 1  # an older poll still waiting ends with 409
        generation = self._poll_generation
        deadline = time.monotonic() + timeout
        while not self._updates and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_TICK_S)
            if self._closing:
                return _ok([])
            if generation != self._poll_generation:
                return _error(409, _CONFLICT)
            if self.webhook_url:
                return _error(409, _WEBHOOK_CONFLICT)
            if self._down:
                return web.Response(status=502, text=_BAD_GATEWAY_HTML, content_type="text/html")
        return _ok(self._updates[:limit])

    async def _delete_webhook(
        self, params: dict[str, Any], files: dict[str, bytes]
    ) -> web.Response:
        if _truthy(params.get("drop_pending_updates")):
            self._updates.clear()
        self.webhook_url = ""
        return _ok(True)

    async def _set_webhook(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        url = str(params.get("url") or "")
        if url and not url.startswith("https://"):
            return _error(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        self.webhook_url = url
        return _ok(True)

    async def _get_webhook_info(
        self, params: dict[str, Any], files: dict[str, bytes]
    ) -> web.Response:
        return _ok(
            {
                "url": self.webhook_url,
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            }
        )

    async def _set_my_commands(
        self, params: dict[str, Any], files: dict[str, bytes]
    ) -> web.Response:
        commands = params.get("commands")
        if not isinstance(commands, list):
            return _error(400, "Bad Request: can't parse commands JSON object")
        self.commands = commands
        return _ok(True)

    async def _answer_callback_query(
        self, params: dict[str, Any], files: dict[str, bytes]
    ) -> web.Response:
        if not params.get("callback_query_id"):
            return _error(400, "Bad Request: query is too old and response timeout expired")
        return _ok(True)


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _decode(name: str, value: Any) -> Any:
    """Form fields arrive as text: numbers for id-like fields, JSON for arrays and objects."""
    if not isinstance(value, str):
        return value
    if name in _INT_FIELDS:
        with contextlib.suppress(ValueError):
            return int(value)
    if value[:1] in ("[", "{"):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    params: dict[str, Any] = {key: _decode(key, value) for key, value in request.query.items()}
    files: dict[str, bytes] = {}
    if request.method != "POST" or not request.can_read_body:
        return params, files
    if request.content_type == "application/json":
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
    elif request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            data = await part.read()
            if part.filename:
                files[part.name] = bytes(data)
            else:
                params[part.name] = _decode(part.name, data.decode())
    else:
        form = await request.post()
        for key, value in form.items():
            if hasattr(value, "file"):
                files[key] = value.file.read()
            else:
                params[key] = _decode(key, value)
    return params, files


class RecordingControls:
    """A :class:`bot.control.Controls` for tests: canned answers, every call recorded.

    ``fail``: method name -> exception to raise instead of answering.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: dict[str, BaseException] = {}

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        """Names of the methods called, in order."""
        return [name for name, _ in self.calls]

    async def status(self) -> dict[str, Any]:
        self._record("status")
        return {
            "mode": "paper",
            "paused": False,
            "halted": None,
            "cycles": 7,
            "last_cycle": "2024-01-02T10:30:00Z",
            "last_error": None,
            "equity": 10_234.5,
            "quote": "USDT",
        }

    async def balance(self) -> dict[str, Any]:
        self._record("balance")
        position = {"coin": "BTC", "amount": 0.1, "price": 43_210.0, "value": 4_321.0}
        return {
            "quote": "USDT",
            "equity": 10_000.0,
            "cash": 5_679.0,
            "positions": [{**position, "weight": 0.4321}],
        }

    async def weights(self) -> dict[str, Any]:
        self._record("weights")
        return {"target": {"BTC": 0.5, "USDT": 0.5}, "actual": {"BTC": 0.43}, "ts": None}

    async def modules(self) -> list[dict[str, Any]]:
        self._record("modules")
        return [
            {
                "coin": "BTC",
                "model_id": "btc-1",
                "ready": True,
                "last_decision": 0.5,
                "pending": None,
            }
        ]

    async def pause(self) -> str:
        self._record("pause")
        return "Paused: no new orders."

    async def resume(self) -> str:
        self._record("resume")
        return "Resumed."

    async def stop(self) -> str:
        self._record("stop")
        return "Stopping after the current cycle."

    async def retrain(self, coin: str) -> str:
        self._record("retrain", coin)
        return f"Retraining {coin}."

    async def plug(self, coin: str, model_id: str | None = None) -> str:
        self._record("plug", coin, model_id)
        return f"Plugging {coin} ({model_id or 'active'})."

    async def unplug(self, coin: str) -> str:
        self._record("unplug", coin)
        return f"Unplugging {coin}."

    async def preview_plug(self, coin: str, model_id: str | None = None) -> str:
        self._record("preview_plug", coin, model_id)
        return f"Plug {coin}: {model_id or 'the active model'} joins the vote at the next cycle."

    async def preview_unplug(self, coin: str) -> str:
        self._record("preview_unplug", coin)
        return f"Unplug {coin} at the next cycle: the rebalance sells {coin}."

    async def audit(self, closes: int = 5) -> dict[str, Any]:
        self._record("audit", closes)
        change = {"asset": "BTC", "wanted": 0.5, "allowed": 0.45, "rules": "max_weight_per_coin"}
        trim = {"coin": "ETH", "side": "buy", "wanted": 2.0, "planned": 1.5, "reason": "cash"}
        return {
            "closes": [
                {
                    "ts": "2024-01-02T10:30:00Z",
                    "source": "vote",
                    "changes": [change],
                    "trims": [trim],
                    "orders": 2,
                }
            ],
            "scanned": 12,
            "since": "2024-01-02T07:45:00Z",
        }

    async def regime(self) -> dict[str, Any]:
        self._record("regime")
        return {"policy": "vote", "controller": False, "state": None}

    async def rollback(self, coin: str) -> str:
        self._record("rollback", coin)
        return f"Rolling back {coin}."

    async def why(self, coin: str) -> dict[str, Any]:
        self._record("why", coin)
        return {
            "coin": coin,
            "ts": "2024-01-02T10:00:00+00:00",
            "weight": 0.5,
            "action": "all_coin",
            "q": {"all_cash": 0.01, "all_coin": 0.25},
            "top": [["BTC:exchange_outflow", 0.18], ["close", -0.04], ["volume", 0.01]],
            "model_id": "btc-1",
            "eam": {"action": "buy", "top": [["BTC:exchange_outflow", 0.3]]},
        }
