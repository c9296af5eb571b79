"""Who may read the dashboard: anyone on the machine when it listens on loopback, otherwise only
a client that shows the token held in the environment variable ``[dashboard].token_env``.

The token is never written to a file or a log: it travels in the ``Authorization: Bearer``
header (not in the URL, which access logs and browser histories keep), is compared in constant
time, and the daemon's log redaction is given it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from config.schema import DashboardConfig


class DashboardConfigError(ValueError):
    """The dashboard cannot start with this configuration (the message names what to fix)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this
    machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def dashboard_token(cfg: DashboardConfig, environ: Mapping[str, str]) -> str | None:
    """The access token from ``environ[cfg.token_env]`` (None when unset and not needed).

    Raises :class:`DashboardConfigError` (one line, naming the variable and never the value)
    when the dashboard listens on a non-loopback address and the variable is unset or empty.
    """
    token = (environ.get(cfg.token_env) or "").strip()
    if token:
        return token
    if not is_loopback(cfg.host):
        raise DashboardConfigError(
            f"[dashboard].host = {cfg.host!r} is not a loopback address: set the access token in "
            f"the environment variable {cfg.token_env} ([dashboard].token_env), or listen on "
            "127.0.0.1"
        )
    return None


def token_matches(expected: str | None, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``expected`` as a bearer token (always true
    when no token is configured)."""
    if expected is None:
        return True
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())
