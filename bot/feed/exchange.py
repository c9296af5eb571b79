"""Building ccxt exchanges from the config, and translating ccxt's errors at the boundary.

``create_exchange`` is the only place that turns an :class:`ExchangeConfig` into a ccxt object:
REST (``ccxt.async_support``) for downloads and orders, ``ccxt.pro`` for websocket streams.

``api_url`` moves every API URL to another host (a proxy, or the fake Binance of the tests)
while keeping each path. Websocket URLs get ``ws``/``wss`` and keep the first label of their
original host as a leading path segment (``wss://stream.binance.com:9443/ws`` becomes
``ws://HOST/stream/ws``): Binance serves spot, USD-M and COIN-M streams under the same ``/ws``
path on different hosts, and ccxt.pro's binance tells a spot socket from a futures one by
``/stream`` in its URL, which the real host name provides and a bare host swap would lose.

Errors: ccxt's ``OperationFailed`` family (network errors, timeouts, 429/418, 5xx, invalid
nonce, unparsable answers) is temporary and worth a retry; everything else (authentication, bad
symbol, invalid order, insufficient funds, any other exchange error) is permanent.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro

from bot.feed.guard import GuardClock, RequestGuard, guarded_class
from config.schema import ExchangeConfig, Secrets

log = logging.getLogger(__name__)

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_REDACT = re.compile(
    r"(signature|api_?key|x-mbx-apikey|secret|listenKey)(['\"]?\s*[=:]\s*['\"]?)[^&\s,'\"}]+",
    re.I,
)
_MAX_MESSAGE = 300


class ExchangeConfigError(ValueError):
    """The ``[exchange]`` config names an exchange ccxt lacks or a malformed ``api_url``."""


def create_exchange(
    cfg: ExchangeConfig,
    secrets: Secrets | None = None,
    *,
    pro: bool = False,
    guard_clock: GuardClock | None = None,
) -> Any:
    """A ready-to-use ccxt exchange for ``cfg``; the caller must ``await exchange.close()``.

    ``pro=True`` returns the ``ccxt.pro`` class (websocket ``watch_*`` methods plus all REST
    methods), otherwise the ``ccxt.async_support`` one. Binance-family exchanges are set to load
    spot markets only, in a single ``exchangeInfo`` request (no currencies, no margin pairs).
    Sandbox mode is switched on before ``api_url`` is applied, so a local fake replaces the
    testnet hosts. API key and secret come from ``secrets`` and are never logged.

    Every client has a :class:`~bot.feed.guard.RequestGuard` (``exchange.guard``, on
    ``guard_clock`` or wall time): bans, request weight and refused keys are enforced on every
    request. ``[exchange].ca_file`` adds a trusted certificate authority (a TLS-intercepting
    proxy) and ``[exchange].resolve`` pins host names to addresses.
    """
    module = ccxt_pro if pro else ccxt_async
    exchange_class = getattr(module, cfg.id, None)
    if exchange_class is None:
        kind = "ccxt.pro" if pro else "ccxt"
        raise ExchangeConfigError(
            f"exchange.id = {cfg.id!r} is not an exchange {kind} {ccxt.__version__} supports"
        )
    params: dict[str, Any] = {
        "enableRateLimit": cfg.rate_limit,
        "timeout": cfg.timeout_ms,
        "options": _single_request_market_options(cfg.id),
    }
    if cfg.ca_file is not None:
        params["cafile"] = str(cfg.ca_file)
    if secrets is not None:
        if secrets.exchange_api_key is not None:
            params["apiKey"] = secrets.exchange_api_key.get_secret_value()
        if secrets.exchange_secret is not None:
            params["secret"] = secrets.exchange_secret.get_secret_value()
    exchange = guarded_class(exchange_class)(params)
    exchange.guard = RequestGuard(
        weight_limit=cfg.weight_limit, headroom=cfg.weight_headroom, clock=guard_clock
    )
    exchange.resolve_hosts = dict(cfg.resolve) or None
    if cfg.sandbox:
        exchange.set_sandbox_mode(True)
    if cfg.api_url:
        exchange.urls["api"] = rewrite_api_urls(exchange.urls["api"], cfg.api_url)
    log.debug(
        "created %s exchange %s (sandbox=%s, api_url=%s, rate_limit=%s, credentials=%s)",
        "ccxt.pro" if pro else "ccxt",
        cfg.id,
        cfg.sandbox,
        cfg.api_url or "default",
        cfg.rate_limit,
        "set" if "apiKey" in params else "none",
    )
    return exchange


def spot_stream_url(cfg: ExchangeConfig) -> str | None:
    """The spot market-data websocket URL ccxt.pro lists for ``cfg`` (testnet in sandbox mode,
    moved to ``api_url`` like every other URL), or ``None`` when the exchange has none."""
    exchange_class = getattr(ccxt_pro, cfg.id, None)
    if exchange_class is None:
        return None
    exchange = exchange_class({"options": _single_request_market_options(cfg.id)})
    if cfg.sandbox:
        exchange.set_sandbox_mode(True)
    ws = exchange.urls.get("api", {}).get("ws")
    url = ws.get("spot") if isinstance(ws, dict) else ws
    if not isinstance(url, str):
        return None
    return rewrite_api_urls(url, cfg.api_url) if cfg.api_url else url


def _single_request_market_options(exchange_id: str) -> dict[str, Any]:
    """Options that keep ``load_markets`` to one request on Binance-family exchanges."""
    if not exchange_id.startswith("binance"):
        return {}
    return {
        "fetchMarkets": {"types": ["spot"]},
        "fetchCurrencies": False,
        "fetchMargins": False,
    }


def rewrite_api_urls(urls: Any, api_url: str) -> Any:
    """Copy of ``urls`` (nested dicts/lists of URL strings) with every host moved to ``api_url``.

    REST URLs keep their path (after any path of ``api_url``); websocket URLs become ``ws``/``wss``
    (after ``api_url``'s scheme) and keep their original host's first label as a path segment.
    """
    target = urlsplit(api_url.rstrip("/"))
    if target.scheme not in ("http", "https") or not target.netloc:
        raise ExchangeConfigError(
            f"exchange.api_url = {api_url!r}: expected http(s)://host[:port][/path]"
        )
    if isinstance(urls, dict):
        return {key: rewrite_api_urls(value, api_url) for key, value in urls.items()}
    if isinstance(urls, list):
        return [rewrite_api_urls(value, api_url) for value in urls]
    if not isinstance(urls, str) or "://" not in urls:
        return urls
    original = urlsplit(urls)
    if original.scheme in ("ws", "wss"):
        label = (original.hostname or "").split(".")[0]
        scheme = _WS_SCHEMES[target.scheme]
        path = f"{target.path}/{label}{original.path}"
    else:
        scheme = target.scheme
        path = f"{target.path}{original.path}"
    return urlunsplit((scheme, target.netloc, path, original.query, original.fragment))


def is_temporary(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying: a network-level or rate-limit failure.

    Temporary: ccxt's ``NetworkError`` family (``RequestTimeout``, ``ExchangeNotAvailable``,
    ``DDoSProtection``, ``RateLimitExceeded``, ``InvalidNonce``) and ``BadResponse`` (an
    unparsable answer, usually a proxy's error page), plus Python's ``TimeoutError`` and
    ``ConnectionError``. Permanent: ``AuthenticationError``, ``BadSymbol``, ``InvalidOrder``,
    ``InsufficientFunds``, every other ``ExchangeError``, and anything else.
    """
    if isinstance(exc, ccxt.OperationFailed):  # NetworkError and BadResponse
        return True
    if isinstance(exc, ccxt.BaseError):
        return False
    return isinstance(exc, TimeoutError | ConnectionError)


_KINDS: list[tuple[type[BaseException], str]] = [
    (ccxt.RateLimitExceeded, "rate limit exceeded"),
    (ccxt.DDoSProtection, "rate limited by the exchange (HTTP 429/418)"),
    (ccxt.RequestTimeout, "request timed out"),
    (ccxt.OnMaintenance, "exchange under maintenance"),
    (ccxt.ExchangeNotAvailable, "exchange not available"),
    (ccxt.InvalidNonce, "request timestamp rejected (clock out of sync?)"),
    (ccxt.NetworkError, "network error"),
    (ccxt.BadResponse, "unreadable answer from the exchange"),
    (ccxt.AuthenticationError, "authentication failed (check the API key and secret)"),
    (ccxt.PermissionDenied, "permission denied"),
    (ccxt.BadSymbol, "unknown or unsupported symbol"),
    (ccxt.InsufficientFunds, "insufficient funds"),
    (ccxt.OrderNotFound, "order not found"),
    (ccxt.InvalidOrder, "invalid order"),
    (ccxt.NotSupported, "not supported by the exchange"),
    (ccxt.BadRequest, "bad request"),
    (ccxt.ExchangeError, "exchange error"),
]


def exchange_code(exc: BaseException) -> int | None:
    """The exchange's own error code in a ccxt exception (Binance's ``{"code": -2015, ..}``),
    whatever class ccxt chose for it; ``None`` when the message carries none."""
    own = getattr(exc, "code", None)
    if isinstance(own, int):
        return own
    message = str(exc)
    start = message.find("{")
    if start < 0:
        return None
    try:
        body = json.loads(message[start : message.rfind("}") + 1])
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong, e.g. ``unknown or unsupported symbol (BadSymbol): binance
    -1121 Invalid symbol.``; signatures and keys are redacted, long texts cut."""
    kind = next((text for cls, text in _KINDS if isinstance(exc, cls)), None)
    if kind is None:
        kind = "temporary error" if is_temporary(exc) else "error"
    detail = _exchange_detail(str(exc)) or type(exc).__name__
    detail = _REDACT.sub(r"\1\2***", " ".join(detail.split()))
    if len(detail) > _MAX_MESSAGE:
        detail = detail[: _MAX_MESSAGE - 3] + "..."
    return f"{kind} ({type(exc).__name__}): {detail}"


def _exchange_detail(message: str) -> str:
    """ccxt's message with a Binance-style ``{"code": .., "msg": ..}`` body made readable."""
    start = message.find("{")
    if start < 0:
        return message
    try:
        body = json.loads(message[start:])
    except ValueError:
        return message
    if isinstance(body, dict) and "msg" in body:
        prefix = message[:start].strip()
        code = body.get("code")
        return " ".join(str(part) for part in (prefix, code, body["msg"]) if part not in (None, ""))
    return message
