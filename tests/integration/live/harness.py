"""Running the live daemon against the fake exchange: configs, a stepped exchange clock.

The exchange's clock is frozen and moved one bar at a time by :func:`step_cycles` once the daemon
has finished the previous cycle (read from ``state.db``), so every run sees the same prices at
the same decisions and runs are comparable to the order.

Every wait here is on an explicit condition: the control socket answering (start-up is over), a
cycle's row in ``state.db``. None depends on how fast the machine is; :data:`HANG_GUARD_S` only
ends a test that would otherwise hang, and a daemon task that died is reported at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosqlite

from bot.timeframes import MINUTE_MS, to_ms
from config.schema import AppConfig, BrokerConfig, DataConfig, LiveConfig, MarketConfig, RiskConfig
from tests.fakes.binance import FakeBinance, synthetic_candles

T0 = to_ms("2024-03-01T00:00:00")
"""The first close the daemon trades at."""
GRACE_MS = 1_000
HANG_GUARD_S = 240.0
"""Longest any wait may take before the test is declared hung (not a synchronisation); below
pytest-timeout's 600 s, so a hung wait fails with its own traceback."""
API_KEY = "test-api-key-0123456789abcdef"
API_SECRET = "test-api-secret-fedcba9876543210"


def seed_market(fake: FakeBinance, coins: tuple[str, ...], *, hours: int = 30) -> None:
    """1m candles for ``coins`` from ``hours`` before T0 to 6 hours after it."""
    start = T0 - hours * 60 * MINUTE_MS
    n = (hours + 6) * 60
    for i, coin in enumerate(coins):
        fake.set_candles(
            f"{coin}USDT",
            "1m",
            synthetic_candles(
                n, start_ms=start, timeframe="1m", start_price=100.0 * (i + 1), seed=i
            ),
        )


def live_config(
    fake: FakeBinance,
    data_dir: Path,
    coins: tuple[str, ...] = ("BTC", "ETH"),
    *,
    paper: bool = True,
    policy: str = "equal_weight",
    risk: dict[str, Any] | None = None,
    **live: Any,
) -> AppConfig:
    """A 1-minute-bar daemon config aimed at ``fake``."""
    return AppConfig(
        data=DataConfig(dir=data_dir),
        market=MarketConfig(
            source="exchange",
            exchange="binance",
            coins=coins,
            base_timeframe="1m",
            timeframe="1m",
            start="2024-01-01",
            end="2024-12-31",
        ),
        exchange=fake.exchange_config(max_retries=3, retry_base_s=0.05),
        broker=BrokerConfig(initial_cash=10_000.0, slippage_bps=0.0),
        risk=RiskConfig(**(risk or {})),
        live=LiveConfig(
            **{
                "paper": paper,
                "policy": policy,
                "grace_s": GRACE_MS / 1000,
                "warmup_days": 1,
                "clock_speed": 1.0,
                "clock_poll_s": 0.05,
                "order_poll_s": 0.05,
                "limit_timeout_s": 0.5,
                "unknown_settle_s": 1.0,
                **live,
            }
        ),
    )


async def cycles_done(state_db: Path) -> int:
    """Cycles finished (done, failed or abandoned) in ``state_db`` (0 before it exists)."""
    if not state_db.exists():
        return 0
    try:
        async with (
            aiosqlite.connect(state_db) as db,
            db.execute(
                "SELECT COUNT(*) FROM cycles WHERE status IN ('done', 'failed', 'abandoned')"
            ) as cursor,
        ):
            row = await cursor.fetchone()
    except aiosqlite.OperationalError:  # not created yet
        return 0
    return int(row[0]) if row else 0


async def next_unknown_check(state_db: Path) -> int | None:
    """The earliest time the daemon waits for on the exchange's clock: the next check of an
    order of unknown fate, or the time of a slice still to send."""
    if not state_db.exists():
        return None
    try:
        async with (
            aiosqlite.connect(state_db) as db,
            db.execute(
                "SELECT MIN(t) FROM (SELECT next_check_ms AS t FROM orders WHERE status ="
                " 'unknown' UNION ALL SELECT send_at_ms FROM orders WHERE status = 'planned')"
            ) as cursor,
        ):
            row = await cursor.fetchone()
    except aiosqlite.OperationalError:  # not created (or migrated) yet
        return None
    return None if row is None or row[0] is None else int(row[0])


async def advance_to_unknown_checks(fake: FakeBinance, state_db: Path, limit_ms: int) -> None:
    """Move the fake's stepped clock to the daemon's next check of an order of unknown fate,
    or its next slice (never past ``limit_ms``): the daemon waits for it on the exchange's
    clock."""
    due = await next_unknown_check(state_db)
    if due is None or not fake.now_ms < due <= limit_ms:
        return
    if not await orders_to_send_now(state_db, fake.now_ms):
        fake.now_ms = due


async def orders_to_send_now(state_db: Path, now_ms: int) -> bool:
    """Whether the daemon has order work at ``now_ms`` rather than waiting for the clock: a
    request out (``sending``; say a -1021 retry), or an order planned for now that nothing
    holds back (no ``reason``: a blocked coin's order waits; and no order of its cycle is of
    unknown fate: its buys wait for the sells' lookups, which wait for the clock). Moving the
    clock then would stamp that order with a later slice's time."""
    try:
        async with (
            aiosqlite.connect(state_db) as db,
            db.execute(
                "SELECT 1 FROM orders AS o WHERE o.status = 'sending' OR (o.status = 'planned'"
                " AND o.reason IS NULL AND COALESCE(o.send_at_ms, 0) <= ? AND NOT EXISTS"
                " (SELECT 1 FROM orders AS u WHERE u.cycle_ts = o.cycle_ts AND"
                " u.status = 'unknown')) LIMIT 1",
                (now_ms,),
            ) as cursor,
        ):
            return await cursor.fetchone() is not None
    except aiosqlite.OperationalError:  # not created (or migrated) yet
        return False


def _check_alive(daemon: asyncio.Task[Any] | None) -> None:
    """Raise what ended ``daemon`` (a daemon that stopped cannot reach the awaited state)."""
    if daemon is not None and daemon.done():
        daemon.result()  # its exception, if it failed
        raise AssertionError(f"the daemon stopped early: {daemon.result()!r}")


async def wait_ready(data_dir: Path, daemon: asyncio.Task[Any] | None = None) -> None:
    """Return once a daemon answers on its control socket (start-up is over); with ``daemon``,
    raise at once if that task ended instead."""
    socket = data_dir / "control.sock"
    async with asyncio.timeout(HANG_GUARD_S):
        while True:
            _check_alive(daemon)
            try:
                _, writer = await asyncio.open_unix_connection(str(socket))
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return


async def next_cycle(
    fake: FakeBinance,
    state_db: Path,
    k: int,
    *,
    first_close: int = T0,
    daemon: asyncio.Task[Any] | None = None,
) -> None:
    """Move the exchange's clock to close ``k`` (+ grace) and return once cycle ``k`` is in
    ``state.db`` (``k + 1`` cycles finished)."""
    close = first_close + k * MINUTE_MS
    fake.now_ms = close + GRACE_MS + 5
    async with asyncio.timeout(HANG_GUARD_S):
        while await cycles_done(state_db) < k + 1:
            await advance_to_unknown_checks(fake, state_db, close + MINUTE_MS - 1)
            if daemon is not None and daemon.done():  # it may have ended right after cycle k
                if await cycles_done(state_db) >= k + 1:
                    return
                _check_alive(daemon)
            await asyncio.sleep(0.02)


async def step_cycles(
    fake: FakeBinance,
    state_db: Path,
    cycles: int,
    *,
    first_close: int = T0,
    daemon: asyncio.Task[Any] | None = None,
) -> None:
    """Move the exchange's clock to each close (+ grace) once the previous cycle is done.

    Waits first for the daemon's control socket: it opens once start-up (warm-up,
    reconciliation) is over and the daemon waits for its first close. While a cycle settles an
    order of unknown fate, the clock moves (within the bar) to the daemon's next check of it.
    """
    await wait_ready(state_db.parent, daemon)
    for k in range(cycles):
        await next_cycle(fake, state_db, k, first_close=first_close, daemon=daemon)


# ------------------------------------------------------------------ the daemon as a process


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(cfg: AppConfig, path: Path) -> Path:
    """``cfg`` as a TOML file (only what differs from the defaults)."""
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [
            f"{_toml_key(key)} = {_toml_value(v)}" for key, v in values.items() if v is not None
        ]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


REPO = Path(__file__).resolve().parents[3]


class DaemonProcess:
    """``cryptorlpm live --config <file>`` as a child process, its output in ``log_path``."""

    def __init__(
        self, config_path: Path, log_path: Path, env: dict[str, str], *, verbose: bool = False
    ) -> None:
        self.verbose = verbose
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._killed = False

    async def start(self) -> None:
        """Start (or restart) the daemon; its output is appended to the log file."""
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli.main",
                *(["--verbose"] if self.verbose else []),
                "live",
                "--config",
                str(self.config_path),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.starts += 1
        self._killed = False

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no cleanup."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            self._killed = True

    async def wait(self, timeout: float = 30.0) -> int:
        """The exit code once the process ended."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    @property
    def running(self) -> bool:
        """Started and neither exited nor sent a SIGKILL (a killed process may take a moment
        to die: it never counts as running again)."""
        return self.proc is not None and self.proc.returncode is None and not self._killed

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")
