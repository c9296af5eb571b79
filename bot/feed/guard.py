"""One guard in front of every request to the exchange: bans, request weight, revoked keys.

Binance's rules, enforced where every request passes (ccxt's ``fetch``), so no caller can forget
them:

- **Bans and rate limits.** A 429 (too much weight) or a 418 (an IP ban of 2 minutes up to 3
  days) carries ``Retry-After`` in seconds, and every request sent during a ban extends it. The
  guard takes the wait in full (no cap), and until it has passed refuses every request *before
  it leaves*, raising :class:`ExchangeBanned` (a ``DDoSProtection`` with ``retry_after``): the
  daemon skips its cycles instead of extending the ban.
- **Request weight.** Each answer's ``X-MBX-USED-WEIGHT-1M`` is the weight used in the current
  minute of the exchange's clock. Once it reaches ``headroom`` of the limit, the next request
  waits for the next minute instead of learning the limit from a 429.
- **Credentials.** Binance answers a wrong, revoked or IP-restricted key with -2015 (or -2014,
  -1022). ccxt raises that as ``AuthenticationError`` only until the instance's first successful
  private call, and as ``DDoSProtection`` after it. The guard recognises those codes whatever
  the class, raises :class:`CredentialsRejected`, and from then on refuses every signed request
  locally: a key the exchange refused is never tried again by this process.

``create_exchange`` (:mod:`bot.feed.exchange`) builds every ccxt client with a guard
(``exchange.guard``). The guard measures time on :class:`GuardClock` (wall time by default; the
daemon gives it the exchange's clock, tests a driven one).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import ccxt
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.timeframes import ms_to_iso

log = logging.getLogger(__name__)

CREDENTIAL_CODES = frozenset({-2015, -2014, -1022})
"""Binance codes that mean the API key or its signature is refused."""
DEFAULT_BAN_S = {429: 60.0, 418: 120.0}
"""Wait when a 429/418 comes without ``Retry-After`` (Binance's shortest IP ban is 2 minutes)."""
MINUTE_MS = 60_000


class ExchangeBanned(ccxt.DDoSProtection):
    """No request leaves until the exchange's ``Retry-After`` has passed.

    ``retry_after``: seconds still to wait; ``until_ms``: the end on the guard's clock.
    """

    def __init__(self, message: str, *, retry_after: float, until_ms: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.until_ms = until_ms


class CredentialsRejected(ccxt.AuthenticationError):
    """The exchange refused the API key (Binance -2015, -2014 or -1022); ``code`` is its code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class GuardClock:
    """Time as the guard sees it: ``now_ms()`` and ``sleep_ms(ms)``."""

    now_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    sleep_ms: Callable[[int], Awaitable[None]] = field(
        default=lambda ms: asyncio.sleep(max(ms, 0) / 1000)
    )


@dataclass(frozen=True)
class Ban:
    """A ban in force: HTTP ``status`` (429 or 418), its end and the exchange's words."""

    status: int
    until_ms: int
    detail: str


class RequestGuard:
    """Bans, request weight and refused credentials of one exchange client (module docstring)."""

    def __init__(
        self,
        *,
        weight_limit: int = 6000,
        headroom: float = 0.8,
        clock: GuardClock | None = None,
    ) -> None:
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.weight_limit = weight_limit
        self.headroom = headroom
        self.clock = clock or GuardClock()
        self.ban: Ban | None = None
        self.bans = 0
        """Bans and rate limits met so far."""
        self.refused_locally = 0
        """Requests the guard kept from leaving (banned, or refused credentials)."""
        self.credentials_error: str | None = None
        self.used_weight = 0
        self._weight_minute: int | None = None
        self.weight_waits = 0

    # -- state ------------------------------------------------------------------------------

    def banned_for_ms(self) -> int:
        """Milliseconds the current ban still lasts (0 when none)."""
        ban = self.ban
        if ban is None:
            return 0
        left = ban.until_ms - self.clock.now_ms()
        if left <= 0:
            log.warning(
                "the exchange's ban (HTTP %d) has passed: requests may go out again", ban.status
            )
            self.ban = None
            return 0
        return left

    def snapshot(self) -> dict[str, Any]:
        """What a status page shows: the ban, refused credentials, the weight used."""
        left = self.banned_for_ms()
        ban = self.ban
        return {
            "banned": None
            if ban is None
            else {
                "status": ban.status,
                "until_ms": ban.until_ms,
                "left_s": left / 1000,
                "detail": ban.detail,
            },
            "credentials_error": self.credentials_error,
            "used_weight_1m": self.used_weight,
            "weight_limit_1m": self.weight_limit,
        }

    # -- the request path -------------------------------------------------------------------

    def check(self, url: str, body: Any) -> None:
        """Refuse a request that must not leave: any during a ban, a signed one once the
        credentials were refused."""
        left = self.banned_for_ms()
        if left > 0:
            assert self.ban is not None
            self.refused_locally += 1
            raise ExchangeBanned(
                f"not sent: the exchange asked for no request before {_iso(self.ban.until_ms)} "
                f"(HTTP {self.ban.status}, {left / 1000:.0f} s left)",
                retry_after=left / 1000,
                until_ms=self.ban.until_ms,
            )
        if self.credentials_error is not None and _signed(url, body):
            self.refused_locally += 1
            raise CredentialsRejected(f"not sent: {self.credentials_error}")

    async def pace(self) -> None:
        """Wait for the next minute of the exchange's clock when this one's weight is spent."""
        minute = self._weight_minute
        if minute is None or self.used_weight < self.headroom * self.weight_limit:
            return
        now = self.clock.now_ms()
        if now // MINUTE_MS != minute:
            return
        wait = (minute + 1) * MINUTE_MS - now + 50
        self.weight_waits += 1
        log.info(
            "request weight %d of %d used this minute: waiting %.1f s for the next minute",
            self.used_weight,
            self.weight_limit,
            wait / 1000,
        )
        await self.clock.sleep_ms(wait)

    def observe(self, status: int, headers: Mapping[str, Any]) -> None:
        """Read an answer's headers: the weight used, and a ban's ``Retry-After``."""
        used = _header(headers, "x-mbx-used-weight-1m")
        if used is not None:
            try:
                self.used_weight = int(float(used))
                self._weight_minute = self.clock.now_ms() // MINUTE_MS
            except ValueError:
                pass
        if status in (418, 429):
            from bot.feed.retry import parse_retry_after  # retry imports the exchange module

            wait_s = parse_retry_after(headers)
            if wait_s is None:
                wait_s = DEFAULT_BAN_S[status]
            until = self.clock.now_ms() + int(wait_s * 1000)
            kind = "IP banned" if status == 418 else "rate limited"
            detail = f"HTTP {status} ({kind}), Retry-After {wait_s:.0f} s"
            if self.ban is None or until > self.ban.until_ms:
                self.ban = Ban(status, until, detail)
            self.bans += 1
            log.error(
                "the exchange answered %s: no request until %s",
                detail,
                _iso(self.ban.until_ms),
            )

    def translate(self, exc: BaseException) -> BaseException:
        """The exception callers should see for ``exc`` raised by ccxt."""
        from bot.feed.exchange import describe_error, exchange_code

        code = exchange_code(exc)
        if code in CREDENTIAL_CODES or (
            code is None and isinstance(exc, ccxt.AuthenticationError | ccxt.PermissionDenied)
        ):
            if self.credentials_error is None:
                self.credentials_error = f"the exchange refused the API key: {describe_error(exc)}"
            return CredentialsRejected(str(exc), code)
        if isinstance(exc, ccxt.DDoSProtection) and self.ban is not None:
            left = self.banned_for_ms()
            if left > 0:
                return ExchangeBanned(
                    f"{exc} (no request before {_iso(self.ban.until_ms)})",
                    retry_after=left / 1000,
                    until_ms=self.ban.until_ms,
                )
        return exc


class GuardedExchange:
    """Mixed in front of a ccxt exchange class by ``create_exchange``: every HTTP request goes
    through :attr:`guard` (ccxt's ``fetch`` is the one place all REST requests pass)."""

    guard: RequestGuard

    async def fetch(self, url: str, method: str = "GET", headers: Any = None, body: Any = None):  # type: ignore[no-untyped-def]
        guard = self.guard
        guard.check(url, body)
        await guard.pace()
        guard.check(url, body)
        try:
            return await super().fetch(url, method, headers, body)  # type: ignore[misc]
        except ccxt.BaseError as exc:
            translated = guard.translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    resolve_hosts: Mapping[str, str] | None = None
    """Host name -> IP address to connect to instead of asking DNS (like ``curl --resolve``)."""

    def open(self, lazy: bool = False) -> None:
        hosts = self.resolve_hosts
        if hosts and getattr(self, "own_session", False) and getattr(self, "session", 1) is None:
            if self.ssl_context is None:  # type: ignore[attr-defined]
                self.ssl_context = ssl.create_default_context(cafile=self.cafile)  # type: ignore[attr-defined]
            self.tcp_connector = aiohttp.TCPConnector(  # type: ignore[attr-defined]
                ssl=self.ssl_context,  # type: ignore[attr-defined]
                resolver=StaticResolver(hosts),
                enable_cleanup_closed=True,
            )
            self.session = aiohttp.ClientSession(connector=self.tcp_connector)  # type: ignore[attr-defined]
        super().open(lazy)  # type: ignore[misc]

    def on_rest_response(  # type: ignore[no-untyped-def]
        self, code, reason, url, method, headers, body, request_headers, request_body
    ):
        self.guard.observe(int(code or 0), headers or {})
        return super().on_rest_response(  # type: ignore[misc]
            code, reason, url, method, headers, body, request_headers, request_body
        )


class StaticResolver(AbstractResolver):
    """An aiohttp resolver that answers fixed addresses for some hosts and asks DNS for the rest."""

    def __init__(self, hosts: Mapping[str, str]) -> None:
        self.hosts = dict(hosts)
        self._fallback = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.hosts.get(host)
        if address is None:
            return await self._fallback.resolve(host, port, family)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        await self._fallback.close()


_GUARDED: dict[type, type] = {}


def guarded_class(base: type) -> type:
    """``base`` (a ccxt exchange class) with :class:`GuardedExchange` in front of it."""
    cls = _GUARDED.get(base)
    if cls is None:
        cls = _GUARDED[base] = type(f"Guarded{base.__name__}", (GuardedExchange, base), {})
    return cls


def _signed(url: str, body: Any) -> bool:
    return "signature=" in url or (isinstance(body, str) and "signature=" in body)


def _header(headers: Mapping[str, Any], name: str) -> Any:
    return next((v for k, v in headers.items() if str(k).lower() == name), None)


def _iso(ms: int) -> str:
    return ms_to_iso(ms)
