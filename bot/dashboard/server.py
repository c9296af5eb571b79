"""The dashboard's HTTP server, run by uvicorn as one more task of the daemon's event loop.

Its socket is bound when the daemon starts (a port already taken is a one-line start-up error,
not a surprise later), and it is served with ``uvicorn.Server.serve`` inside the daemon's loop:
every handler is a coroutine that reads the controls (in memory) or a read-only database
(through aiosqlite's thread), so a page view never holds a cycle up. uvicorn's signal handling
is left out (the daemon owns SIGINT/SIGTERM), as are its access log (the daemon's log stays about
trading) and its lifespan events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Mapping

import uvicorn

from bot.control import Controls
from bot.dashboard.access import DashboardConfigError, dashboard_token, is_loopback
from bot.dashboard.app import create_app
from bot.dashboard.reader import StateReader
from bot.dashboard.view import DashboardView
from bot.tasks import stop_task
from config.schema import AppConfig

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon's own handlers stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class DashboardServer:
    """The dashboard of one daemon: :meth:`bind` at start-up, :meth:`start` once the controls
    exist, :meth:`close` at the end."""

    def __init__(self, cfg: AppConfig, token: str | None, state_db: str) -> None:
        if token is None and not is_loopback(cfg.dashboard.host):
            dashboard_token(cfg.dashboard, {})  # raises the one-line error naming the variable
        self.cfg = cfg
        self.token = token
        self.reader = StateReader(
            cfg.data.dir / state_db, cfg.data.market_path, cfg.data.metrics_path
        )
        self._socket: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, cfg: AppConfig, environ: Mapping[str, str], state_db: str
    ) -> DashboardServer:
        """A dashboard for ``cfg`` with its token from ``environ``; raises
        :class:`DashboardConfigError` when a non-loopback address has no token."""
        return cls(cfg, dashboard_token(cfg.dashboard, environ), state_db)

    @property
    def url(self) -> str:
        """Where the page is (the bound port, once bound)."""
        host = self.cfg.dashboard.host
        port = self._socket.getsockname()[1] if self._socket else self.cfg.dashboard.port
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def bind(self) -> None:
        """Take the address and port now; raises :class:`DashboardConfigError` (one line)
        when they cannot be had."""
        board = self.cfg.dashboard
        try:
            infos = socket.getaddrinfo(board.host, board.port, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(64)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise DashboardConfigError(
                f"[dashboard]: cannot listen on {board.host}:{board.port} ({exc.strerror or exc});"
                " choose another [dashboard].port or host"
            ) from None
        sock.setblocking(False)
        self._socket = sock

    async def start(self, controls: Controls) -> None:
        """Serve the page and its data from ``controls`` as a task of the running loop."""
        if self._socket is None:
            self.bind()
        view = DashboardView(self.cfg, controls, self.reader)
        app = create_app(view.snapshot, token=self.token, refresh_s=self.cfg.dashboard.refresh_s)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)
        assert self._socket is not None
        self._task = asyncio.create_task(self._serve(self._socket), name="dashboard")
        guard = "token required" if self.token else "no token: local users only"
        log.info("dashboard on %s (%s)", self.url, guard)

    async def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[sock])
        except (Exception, SystemExit):  # the dashboard never takes the daemon down
            log.exception("the dashboard stopped")

    async def close(self) -> None:
        """Stop serving (open connections get two seconds) and close the databases."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except TimeoutError:
                await stop_task(self._task)
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        await self.reader.close()


__all__ = ["DashboardConfigError", "DashboardServer"]
