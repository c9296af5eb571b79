"""The dashboard's parts: the baselines' arithmetic, the token rule, the web application's
answers, the read-only journal views, and the server inside a running event loop."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest

from bot.dashboard import DashboardConfigError, DashboardServer, dashboard_token, is_loopback
from bot.dashboard.access import token_matches
from bot.dashboard.app import create_app
from bot.dashboard.reader import StateReader
from bot.dashboard.view import DashboardView, baseline_curves, thin
from bot.engine.step import StepResult
from bot.events import RiskRefusal, TargetWeights
from bot.live.daemon import LiveConfigError, run_daemon
from bot.store.journal import Journal
from config.schema import AppConfig, DashboardConfig, DataConfig, Secrets
from tests.integration.live.harness import REPO

TOKEN = "dashboard-token-5f1c9e"


# -- baselines ----------------------------------------------------------------------------------


def test_baselines_rebalance_to_equal_weights_at_every_close_and_buy_and_hold_never_trades() -> (
    None
):
    closes = {"A": {1: 10.0, 2: 20.0, 3: 10.0}, "B": {1: 10.0, 2: 10.0, 3: 10.0}}
    equal, hold = baseline_curves([1, 2, 3], [100.0, 90.0, 80.0], closes)
    assert hold == pytest.approx([100.0, 150.0, 100.0])  # 50 in each, never rebalanced
    assert equal == pytest.approx([100.0, 150.0, 112.5])  # x1.5, then x(0.5 + 1) / 2


def test_a_coin_without_a_close_yet_is_held_as_cash_and_a_missing_close_is_carried() -> None:
    closes = {"A": {1: 10.0, 3: 20.0}, "B": {2: 5.0, 3: 10.0}}
    equal, hold = baseline_curves([1, 2, 3], [100.0] * 3, closes)
    assert hold == pytest.approx([100.0, 100.0, 200.0])  # A x2; B bought at 5, x2
    assert equal == pytest.approx([100.0, 100.0, 200.0])
    nothing, _ = baseline_curves([1, 2], [100.0, 100.0], {"A": {2: 1.0}})
    assert nothing == [None, 100.0]


def test_a_long_curve_is_thinned_evenly_keeping_its_first_and_last_points() -> None:
    picked = thin(10_000, 100)
    assert len(picked) <= 100 and picked[0] == 0 and picked[-1] == 9_999
    assert thin(5, 100) == [0, 1, 2, 3, 4]


# -- the token rule -----------------------------------------------------------------------------


def test_only_loopback_addresses_count_as_local() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]")))
    assert not any(map(is_loopback, ("0.0.0.0", "192.168.1.4", "::", "dashboard.example.org")))


def test_a_dashboard_beyond_loopback_without_its_token_is_refused_in_one_line() -> None:
    board = DashboardConfig(enabled=True, host="0.0.0.0", token_env="MY_BOARD_TOKEN")
    with pytest.raises(DashboardConfigError) as refused:
        dashboard_token(board, {"MY_BOARD_TOKEN": "  "})
    message = str(refused.value)
    assert "MY_BOARD_TOKEN" in message and "0.0.0.0" in message and "\n" not in message
    assert dashboard_token(board, {"MY_BOARD_TOKEN": TOKEN}) == TOKEN
    local = DashboardConfig(enabled=True)
    assert dashboard_token(local, {}) is None
    assert dashboard_token(local, {"CRYPTORLPM_DASHBOARD_TOKEN": TOKEN}) == TOKEN


def test_only_the_bearer_token_itself_opens_the_data() -> None:
    assert token_matches(None, None)
    assert token_matches(TOKEN, f"Bearer {TOKEN}") and token_matches(TOKEN, f"bearer {TOKEN}")
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert not token_matches(TOKEN, header)


# -- the web application ------------------------------------------------------------------------


async def _get(app: Any, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://board") as client:
        return await client.get(path, headers=headers)


async def test_with_a_token_the_data_needs_it_and_the_page_never_holds_it() -> None:
    async def snapshot() -> dict[str, Any]:
        return {"status": {"equity": 1.5}}

    app = create_app(snapshot, token=TOKEN, refresh_s=2.5)
    page = await _get(app, "/")
    assert page.status_code == 200 and TOKEN not in page.text
    assert "const REFRESH_MS = 2500;" in page.text and "TOKEN_REQUIRED = true" in page.text
    assert (await _get(app, "/api/snapshot")).status_code == 401
    wrong = await _get(app, "/api/snapshot", Authorization="Bearer nope")
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    right = await _get(app, "/api/snapshot", Authorization=f"Bearer {TOKEN}")
    assert right.status_code == 200 and right.json() == {"status": {"equity": 1.5}}
    assert right.headers["cache-control"] == "no-store"
    assert (await _get(app, "/docs")).status_code == 404


async def test_a_snapshot_that_fails_answers_503_with_one_line() -> None:
    async def snapshot() -> dict[str, Any]:
        raise RuntimeError("database is locked")

    answer = await _get(create_app(snapshot, token=None), "/api/snapshot")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "the daemon's state cannot be read now: database is locked"


# -- read-only views of the journal -------------------------------------------------------------


def _decision(ts: int) -> StepResult:
    return StepResult(
        ts,
        10_000.0,
        TargetWeights(ts, (("BTC", 0.5), ("USDT", 0.5)), "vote"),
        (RiskRefusal(ts, "max_weight_per_coin", "BTC", 0.5, 0.3, "cap 30%"),),
        (),
        allowed=(("BTC", 0.3), ("USDT", 0.7)),
    )


async def test_decisions_are_read_with_their_explanation_when_the_journal_has_one(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    async with await Journal.open(state) as journal:
        await journal.record_decision(_decision(1_000), {"modules": {"BTC": "BTC-1"}})
        await journal.record_decision(_decision(2_000))
    reader = StateReader(state, tmp_path / "market.db", tmp_path / "metrics.db")
    try:
        before = await reader.decisions(10)
        assert [d["ts"] for d in before] == [1_000, 2_000] and "explanation" not in before[0]
        assert before[0]["allowed"] == [["BTC", 0.3], ["USDT", 0.7]]
        assert before[0]["inputs"] == {"modules": {"BTC": "BTC-1"}}
        assert await reader.closes("binance", "BTC/USDT", "1h", 0, 10**13) == {}  # no market.db
        await reader.close()
        async with aiosqlite.connect(state) as db:  # what the explanations migration adds
            await db.execute("ALTER TABLE decisions ADD COLUMN explanation TEXT")
            await db.execute(
                "UPDATE decisions SET explanation = ? WHERE ts = 2000",
                ('{"BTC": {"action": "coin", "top": [["close", 0.2]]}}',),
            )
            await db.commit()
        latest = (await reader.decisions(1))[0]
        assert latest["explanation"] == {"BTC": {"action": "coin", "top": [["close", 0.2]]}}
        assert (await reader.decisions(2))[0]["explanation"] is None
    finally:
        await reader.close()


async def test_the_dashboard_cannot_write_to_the_journal(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    async with await Journal.open(state) as journal:
        await journal.record_decision(_decision(1_000))
    reader = StateReader(state, tmp_path / "market.db", tmp_path / "metrics.db")
    try:
        with pytest.raises(aiosqlite.OperationalError, match="readonly"):
            await reader.state.rows("DELETE FROM decisions")
    finally:
        await reader.close()


# -- the server in the daemon's loop ------------------------------------------------------------


class StubControls:
    """The controls of a daemon that has not traded yet."""

    async def status(self) -> dict[str, Any]:
        return {"mode": "paper", "cycles": 0, "equity": 10_000.0, "quote": "USDT"}

    async def balance(self) -> dict[str, Any]:
        return {"quote": "USDT", "equity": 10_000.0, "cash": 10_000.0, "positions": []}

    async def weights(self) -> dict[str, Any]:
        return {"target": {}, "actual": {"USDT": 1.0}, "ts": None}

    async def modules(self) -> list[dict[str, Any]]:
        return []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, **board: Any) -> AppConfig:
    return AppConfig(
        data=DataConfig(dir=tmp_path),
        dashboard=DashboardConfig(enabled=True, **{"port": _free_port(), **board}),
    )


async def test_the_server_runs_in_the_loop_leaves_the_signals_alone_and_never_logs_its_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = _config(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    server = DashboardServer.from_config(cfg, {"CRYPTORLPM_DASHBOARD_TOKEN": TOKEN}, "state.db")
    await server.start(StubControls())  # type: ignore[arg-type]
    try:
        assert signal.getsignal(signal.SIGINT) is handler
        async with httpx.AsyncClient(base_url=server.url) as client:
            refused = await client.get(f"/api/snapshot?token={TOKEN}")
            answer = await client.get("/api/snapshot", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        await server.close()
    assert refused.status_code == 401  # a token in the URL is not accepted
    data = answer.json()
    assert data["status"]["equity"] == 10_000.0
    assert data["equity"]["ts"] == [] and data["decisions"] == [] and data["refusals"] == []
    assert [row["coin"] for row in data["freshness"]] == list(cfg.market.coins)
    assert f"dashboard on {server.url} (token required)" in caplog.text
    served = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name.startswith("uvicorn") for r in served)  # the server's own lines...
    assert not [r.getMessage() for r in served if TOKEN in r.getMessage()]  # ...never hold it
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = DashboardServer(_config(tmp_path, port=port), None, "state.db")
        with pytest.raises(DashboardConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port} "):
            server.bind()


async def test_the_daemon_refuses_to_start_a_dashboard_beyond_loopback_without_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRYPTORLPM_DASHBOARD_TOKEN", raising=False)
    cfg = _config(tmp_path, host="0.0.0.0")
    cfg = cfg.model_copy(update={"live": cfg.live.model_copy(update={"paper": True})})

    async def no_policy(*_: Any) -> Any:
        raise AssertionError("the daemon went past its start-up checks")

    with pytest.raises(LiveConfigError, match="CRYPTORLPM_DASHBOARD_TOKEN"):
        await run_daemon(cfg, Secrets(), no_policy, install_signals=False)
    assert not (tmp_path / "state.db").exists()


def test_the_cli_says_why_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    config.write_text(
        f'[data]\ndir = "{tmp_path}"\n[live]\npaper = true\npolicy = "equal_weight"\n'
        '[dashboard]\nenabled = true\nhost = "0.0.0.0"\ntoken_env = "BOARD_TOKEN_FOR_TEST"\n',
        encoding="utf-8",
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli.main", "live", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode != 0
    assert len(lines) == 1 and "BOARD_TOKEN_FOR_TEST" in lines[0], lines
    assert "Traceback" not in done.stderr


def test_the_config_section_is_off_by_default_on_loopback() -> None:
    board = AppConfig().dashboard
    assert (board.enabled, board.host, board.token_env) == (
        False,
        "127.0.0.1",
        "CRYPTORLPM_DASHBOARD_TOKEN",
    )
    with pytest.raises(ValueError, match="token_env"):
        DashboardConfig(token_env="not a name")


async def test_the_view_lists_wanted_and_allowed_weights_with_rules_and_follows_new_decisions(
    tmp_path: Path,
) -> None:
    cfg = AppConfig(data=DataConfig(dir=tmp_path))
    state = tmp_path / "state.db"
    reader = StateReader(state, tmp_path / "market.db", tmp_path / "metrics.db")
    view = DashboardView(cfg, StubControls(), reader)  # type: ignore[arg-type]
    try:
        async with await Journal.open(state) as journal:
            await journal.record_decision(_decision(1_000))
            first = await view.snapshot()
            await journal.record_decision(_decision(2_000))
            await journal.add_refusals(_decision(2_000).refusals)
            second = await view.snapshot()
    finally:
        await reader.close()
    assert first["equity"]["ts"] == [1_000] and second["equity"]["ts"] == [1_000, 2_000]
    assert second["equity"]["buy_and_hold"] == [None, None]  # no stored bars: no baseline
    assert [d["ts"] for d in second["decisions"]] == [2_000, 1_000]  # newest first
    assert second["decisions"][0]["weights"] == [
        {"asset": "BTC", "wanted": 0.5, "allowed": 0.3, "rules": ["max_weight_per_coin"]},
        {"asset": "USDT", "wanted": 0.5, "allowed": 0.7, "rules": []},
    ]
    btc = next(row for row in second["weights"] if row["asset"] == "BTC")
    assert (btc["wanted"], btc["allowed"], btc["actual"]) == (0.5, 0.3, 0.0)
    assert [(r["time"], r["rule"], r["asset"]) for r in second["refusals"]] == [
        ("1970-01-01T00:00:02Z", "max_weight_per_coin", "BTC")
    ]
