"""The dashboard's web application: the page (``GET /``) and its data (``GET /api/snapshot``).

The page is one static HTML file with its script and an inline SVG chart (no build step, no
third-party script). It asks ``/api/snapshot`` every ``refresh_s`` seconds. With a token
configured, ``/api/snapshot`` answers 401 unless the request carries ``Authorization: Bearer
<token>``; the page asks for the token once and keeps it in the tab's ``sessionStorage`` (it can
also be given in the URL's fragment, ``#token=...``, which browsers never send to the server).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse

from bot.dashboard.access import token_matches

log = logging.getLogger(__name__)

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
"""Returns the dashboard's data (see :meth:`bot.dashboard.view.DashboardView.snapshot`)."""


def page_html(refresh_s: float, *, token_required: bool) -> str:
    """The page, with its refresh period and whether it must ask for a token."""
    text = resources.files("bot.dashboard").joinpath("static/index.html").read_text("utf-8")
    return text.replace("__REFRESH_MS__", str(int(refresh_s * 1000))).replace(
        "__TOKEN_REQUIRED__", "true" if token_required else "false"
    )


def create_app(snapshot: Snapshot, *, token: str | None, refresh_s: float = 5.0) -> FastAPI:
    """The FastAPI application serving the page and ``snapshot``'s data (behind ``token`` when
    one is given)."""
    app = FastAPI(title="cryptorlpm dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    html = page_html(refresh_s, token_required=token is not None)
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @app.get("/api/snapshot")
    async def data(authorization: str | None = Header(default=None)) -> JSONResponse:
        if not token_matches(token, authorization):
            raise HTTPException(
                401,
                "this dashboard needs its token: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            content = await snapshot()
        except Exception as exc:  # the page shows one line; the daemon goes on
            log.warning("dashboard: the snapshot failed: %s", exc, exc_info=True)
            raise HTTPException(503, f"the daemon's state cannot be read now: {exc}") from None
        return JSONResponse(content, headers=headers)

    return app
