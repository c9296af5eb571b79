"""The web dashboard of a daemon trading on the fake exchange: what its data says (httpx, in the
default run) and what a person sees in a headless Chromium (skipped only without a browser).

The daemon votes with two tiny Crypto Modules (BTC's always cash, ETH's always in the coin, so
the vote wants ETH at 50%) under a 30% cap per coin: every close journals a refusal of ETH
50% -> 30%. Both tests read the expected values from the daemon's controls and the fake's
candles, never from the dashboard's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest

from bot.cli.live_run import build_policy
from bot.live.control import DaemonControls
from bot.live.daemon import run_daemon, state_path
from bot.store import MetricStore
from bot.timeframes import DAY_MS, MINUTE_MS
from config.schema import AppConfig, DashboardConfig, Secrets
from strategies import versions
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import HANG_GUARD_S, T0, live_config, seed_market, step_cycles
from tests.integration.live.modules import constant_module

COINS = ("BTC", "ETH")
CYCLES = 3
SCREENSHOTS = "/work/screenshots"
"""Where the screenshot goes on the project's machines (``CRYPTORLPM_SCREENSHOTS`` overrides it;
elsewhere the test's temporary folder)."""
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def browser_binary() -> str | None:
    """A Chromium or Chrome on this machine (``CHROME_BIN`` first), or None."""
    named = os.environ.get("CHROME_BIN")
    if named and Path(named).exists():
        return named
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot_path(tmp_path: Path) -> Path:
    folder = os.environ.get("CRYPTORLPM_SCREENSHOTS")
    if folder is None:
        folder = SCREENSHOTS if Path(SCREENSHOTS).parent.is_dir() else str(tmp_path)
    return Path(folder) / "dashboard.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    """A daemon with its dashboard, after ``CYCLES`` cycles."""

    cfg: AppConfig
    controls: DaemonControls
    url: str
    modules: dict[str, str]
    explanation: Any
    """What the latest decision's ``explanation`` column holds."""


async def explain_latest(state_db: Path, modules: dict[str, str]) -> Any:
    """The latest decision's explanation; where the journal has none yet (no explanations
    migration, or a policy that does not explain), one is written in the shape the Crypto
    Modules journal (per coin: ``action``, ``top`` inputs with their attributions, ...)."""
    async with aiosqlite.connect(state_db) as db:
        async with db.execute("PRAGMA table_info(decisions)") as cursor:
            columns = [row[1] for row in await cursor.fetchall()]
        if "explanation" not in columns:
            await db.execute("ALTER TABLE decisions ADD COLUMN explanation TEXT")
        async with db.execute(
            "SELECT ts, explanation FROM decisions ORDER BY ts DESC LIMIT 1"
        ) as cursor:
            ts, text = await cursor.fetchone()  # type: ignore[misc]
        if text is None:
            explanation = {
                "ETH": {
                    "model_id": modules["ETH"],
                    "position": 0.3,
                    "action": "coin",
                    "q": {"cash": 0.1, "coin": 0.4},
                    "top": [["close", 0.21], ["volume", -0.04], ["high", 0.01]],
                    "pcs": [],
                }
            }
            text = json.dumps(explanation)
            await db.execute("UPDATE decisions SET explanation = ? WHERE ts = ?", (text, ts))
            await db.commit()
    return json.loads(text)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        yield server


@contextlib.asynccontextmanager
async def daemon_with_dashboard(fake: FakeBinance, tmp_path: Path) -> AsyncIterator[Running]:
    root = tmp_path / "models"
    modules = {
        "BTC": constant_module(fake, root, "BTC", 0, 1),
        "ETH": constant_module(fake, root, "ETH", 1, 2),
    }
    for coin, model in modules.items():
        versions.activate(root, coin, model, reason="initial", at_ms=T0)
    cfg = live_config(
        fake, tmp_path / "data", COINS, policy="vote", risk={"max_weight_per_coin": 0.3}
    )
    port = free_port()
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(update={"models_dir": root}),
            "dashboard": DashboardConfig(enabled=True, port=port, refresh_s=0.2),
        }
    )
    async with await MetricStore.open(cfg.data.metrics_path) as metrics:  # one on-chain series
        day = (T0 // DAY_MS - 2) * DAY_MS
        await metrics.upsert_metrics([("BTC", "active_addresses", day, day + DAY_MS, 912.5)], "csv")
    got: dict[str, Any] = {}

    async def grab(controls: Any) -> list[Any]:
        got["controls"] = controls
        return []

    stop = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon(
            cfg, Secrets(), build_policy, stop=stop, install_signals=False, alerts_factory=grab
        )
    )
    try:
        await step_cycles(fake, state_path(cfg), CYCLES, daemon=daemon)
        explanation = await explain_latest(state_path(cfg), modules)
        url = f"http://127.0.0.1:{port}/"
        yield Running(cfg, got["controls"], url, modules, explanation)
    finally:
        stop.set()
        await asyncio.wait_for(daemon, HANG_GUARD_S)


def close_of(fake: FakeBinance, coin: str, ts: int) -> float:
    """The close of ``coin``'s 1m bar closing at ``ts``."""
    frame = fake.candles(f"{coin}USDT", "1m").set_index("open_time")
    return float(frame.loc[ts - MINUTE_MS, "close"])


async def test_dashboard_data_shows_equity_baselines_weights_refusals_and_module_health(
    fake: FakeBinance, tmp_path: Path
) -> None:
    async with daemon_with_dashboard(fake, tmp_path) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            page = await client.get("/")
            answer = await client.get("/api/snapshot")
        status = await running.controls.status()
        weights = await running.controls.weights()
    assert page.status_code == 200 and "Equity against baselines" in page.text
    assert answer.status_code == 200
    data = answer.json()

    assert data["status"]["equity"] == status["equity"]
    assert data["status"]["cycles"] == CYCLES
    eth = next(w for w in data["weights"] if w["asset"] == "ETH")
    assert eth["wanted"] == pytest.approx(0.5)  # BTC's module says cash, ETH's the coin
    assert eth["allowed"] == pytest.approx(0.3)  # capped at 30%
    assert eth["actual"] == weights["actual"]["ETH"] == pytest.approx(0.3, abs=0.01)

    # equity against baselines, on the closes the daemon decided at
    curve = data["equity"]
    closes = [T0 + k * MINUTE_MS for k in range(CYCLES)]
    assert curve["ts"] == closes
    start = curve["daemon"][0]
    assert start == pytest.approx(10_000.0)
    hold = [
        start / 2 * sum(close_of(fake, c, t) / close_of(fake, c, T0) for c in COINS) for t in closes
    ]
    assert curve["buy_and_hold"] == pytest.approx(hold)
    equal = [start]
    for before, after in itertools.pairwise(closes):
        growth = sum(close_of(fake, c, after) / close_of(fake, c, before) for c in COINS) / 2
        equal.append(equal[-1] * growth)
    assert curve["equal_weight"] == pytest.approx(equal)

    # refusals and the decisions that explain them
    refused = [(r["rule"], r["asset"], r["wanted"], r["allowed"]) for r in data["refusals"]]
    assert refused[0] == ("max_weight_per_coin", "ETH", pytest.approx(0.5), pytest.approx(0.3))
    assert len(refused) == CYCLES
    latest = data["decisions"][0]
    assert latest["ts"] == closes[-1]
    eth_decision = next(w for w in latest["weights"] if w["asset"] == "ETH")
    assert eth_decision == {
        "asset": "ETH",
        "wanted": pytest.approx(0.5),
        "allowed": pytest.approx(0.3),
        "rules": ["max_weight_per_coin"],
    }
    assert latest["modules"] == running.modules
    assert latest["explanation"] == running.explanation

    # module health and input freshness
    health = {m["coin"]: m for m in data["modules"]}
    assert {c: health[c]["model_id"] for c in COINS} == running.modules
    assert all(health[c]["ready"] for c in COINS)
    fresh = {f["coin"]: f for f in data["freshness"]}
    assert {c: fresh[c]["bars_behind"] for c in COINS} == {"BTC": 0, "ETH": 0}
    assert fresh["ETH"]["price"] == pytest.approx(close_of(fake, "ETH", closes[-1]))
    assert [(m["asset"], m["name"], m["value"]) for m in data["metrics"]] == [
        ("BTC", "active_addresses", 912.5)
    ]


@pytest.mark.slow
async def test_dashboard_in_headless_chromium_shows_what_the_daemon_holds(
    fake: FakeBinance, tmp_path: Path
) -> None:
    binary = browser_binary()
    if binary is None:
        pytest.skip(
            "no Chromium or Chrome binary on this machine (looked for CHROME_BIN and "
            f"{', '.join(BROWSERS)}): `apt-get install chromium` to run this test"
        )
    from playwright.async_api import async_playwright

    async with daemon_with_dashboard(fake, tmp_path) as running, async_playwright() as play:
        status = await running.controls.status()
        weights = await running.controls.weights()
        browser = await play.chromium.launch(executable_path=binary, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1100})
            await page.goto(running.url)
            await page.wait_for_selector(f"body[data-loaded='{CYCLES}']", timeout=30_000)
            seen = {
                "equity": await page.inner_text("#equity-value"),
                "eth_now": await page.inner_text("#weights tr[data-asset='ETH'] .actual"),
                "eth_allowed": await page.inner_text("#weights tr[data-asset='ETH'] .allowed"),
                "refusals": await page.locator(
                    "#refusals tr[data-rule='max_weight_per_coin'][data-asset='ETH']"
                ).count(),
                "modules": {
                    coin: await page.inner_text(f"#modules tr[data-coin='{coin}'] .version")
                    for coin in COINS
                },
                "ready": {
                    coin: await page.inner_text(f"#modules tr[data-coin='{coin}'] .readiness")
                    for coin in COINS
                },
                "lines": await page.locator("#equity-chart path").count(),
                "explained": {
                    coin: await page.inner_text(
                        f"#decisions .decision:first-child .explanation div[data-coin='{coin}']"
                    )
                    for coin, why in running.explanation.items()
                    if isinstance(why, dict) and why.get("top")
                },
                "banner": await page.is_visible("#banner"),
            }
            shot = screenshot_path(tmp_path)
            shot.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()

    assert seen["equity"] == f"{status['equity']:,.2f} USDT"
    assert seen["eth_now"] == f"{100 * weights['actual']['ETH']:.1f}%"
    assert seen["eth_allowed"] == "30.0%"
    assert seen["refusals"] == CYCLES
    assert seen["modules"] == running.modules
    assert seen["ready"] == {"BTC": "ready", "ETH": "ready"}
    assert seen["lines"] == 3  # the daemon, 1/N and buy & hold
    assert seen["banner"] is False
    assert seen["explained"]  # the latest decision's explanation, in words
    for coin, line in seen["explained"].items():
        why = running.explanation[coin]
        assert line.startswith(f"{coin} → {why['action']} because {why['top'][0][0]} ")


class IdleControls:
    """The controls of a daemon that has not traded yet."""

    async def status(self) -> dict[str, Any]:
        return {"mode": "paper", "cycles": 0, "equity": 10_000.0, "quote": "USDT"}

    async def balance(self) -> dict[str, Any]:
        return {"quote": "USDT", "equity": 10_000.0, "cash": 10_000.0, "positions": []}

    async def weights(self) -> dict[str, Any]:
        return {"target": {}, "actual": {"USDT": 1.0}, "ts": None}

    async def modules(self) -> list[dict[str, Any]]:
        return []


@pytest.mark.slow
async def test_in_chromium_a_token_protected_dashboard_asks_for_its_token_once(
    tmp_path: Path,
) -> None:
    binary = browser_binary()
    if binary is None:
        pytest.skip(f"no Chromium or Chrome binary on this machine (looked for {BROWSERS})")
    from playwright.async_api import async_playwright

    from bot.dashboard import DashboardServer
    from config.schema import DataConfig

    token = "board-token-0c7f2a"
    cfg = AppConfig(
        data=DataConfig(dir=tmp_path), dashboard=DashboardConfig(enabled=True, port=free_port())
    )
    server = DashboardServer.from_config(cfg, {"CRYPTORLPM_DASHBOARD_TOKEN": token}, "state.db")
    await server.start(IdleControls())  # type: ignore[arg-type]
    try:
        async with async_playwright() as play:
            browser = await play.chromium.launch(executable_path=binary, headless=True)
            page = await browser.new_page()
            await page.goto(server.url)
            await page.wait_for_selector("#token-form", state="visible")
            assert await page.inner_text("#equity-value") == "…"  # nothing shown without it
            await page.fill("#token-input", "not-the-token")
            await page.click("#token-form button")
            await page.wait_for_selector("#banner", state="visible")
            refused = await page.inner_text("#banner")
            await page.fill("#token-input", token)
            await page.click("#token-form button")
            await page.wait_for_selector("body[data-loaded='0']")
            shown = await page.inner_text("#equity-value")
            other = await browser.new_page()  # the token in the URL's fragment
            await other.goto(server.url + f"#token={token}")
            await other.wait_for_selector("body[data-loaded='0']")
            url_after = other.url
            await browser.close()
    finally:
        await server.close()
    assert refused == "the token was refused"
    assert shown == "10,000.00 USDT"
    assert token not in url_after  # read, then taken out of the address bar
