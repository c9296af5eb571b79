"""``cryptorlpm live``: the daemon's assembly, start-up, main loop and graceful stop.

Start-up order (each step needs the previous one):

1. take the lock on ``state.db`` (one daemon per state), open it and the stores;
2. connect to the exchange (public endpoints only in paper mode), load its markets (lot, tick
   and minimum notional of every coin come from there) and read its clock;
3. top up ``market.db`` with the closed bars of the last ``warmup_days``;
4. build the policy from the stores (the factory warms the Crypto Modules up on that history);
5. build the engine with a ccxt or paper executor, mark the account at the latest closes;
6. reconcile with the exchange and finish a cycle a crash interrupted, restore the guardrails'
   state and the operator's pause;
7. open the control socket (and Telegram, and the web dashboard, whose port is taken at step 1),
   then run cycles until SIGINT/SIGTERM, ``/stop`` or
   ``max_cycles``. A stop lets the running cycle finish (orders in flight are followed to their
   end); every journal write is already committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.engine.execution import Slicer
from bot.engine.kernel import Engine
from bot.engine.step import Policy
from bot.events import FlattenPositions, PauseTrading, ResumeTrading
from bot.feed.dataset import check_stores
from bot.feed.exchange import create_exchange, describe_error, is_temporary
from bot.feed.guard import GuardClock, RequestGuard
from bot.feed.retry import call_with_retries
from bot.live.clock import ExchangeTimeClock
from bot.live.control import ControlSocket, DaemonControls, ModuleHost
from bot.live.driver import LiveDriver
from bot.live.executor import Executor, paper_balances
from bot.live.loop import DaemonLoop
from bot.live.reconcile import Reconciliation, reconcile
from bot.live.warmup import warm_up_policy
from bot.store import MarketStore, MetricStore
from bot.store.journal import Journal
from bot.timeframes import DAY_MS, ms_to_iso, timeframe_ms
from bot.venues.base import Venue
from bot.venues.ccxt import CcxtVenue
from bot.venues.orders import rules_from_markets
from bot.venues.sim import SimVenue, forming_candle_open
from config.schema import AppConfig, Secrets

if TYPE_CHECKING:
    from bot.dashboard import DashboardServer

log = logging.getLogger(__name__)


class LiveConfigError(ValueError):
    """The daemon cannot start with this configuration (message names what to fix)."""


class ExchangeUnreachable(LiveConfigError):
    """The exchange did not answer the daemon's first request: it did not start."""


PolicyFactory = Callable[
    [AppConfig, MarketStore, MetricStore, int], Awaitable[tuple[Policy, ModuleHost | None]]
]
"""``(cfg, market, metrics, now_ms) -> (policy, module host or None)``; warms the policy up."""


AlertsFactory = Callable[[DaemonControls], Awaitable[list[Any]]]
"""Builds the alert/command services once the controls exist; each has ``start``/``close``."""


@dataclass
class DaemonResult:
    """How a daemon run ended."""

    cycles: int
    equity: float
    reason: str


class StateLock:
    """An exclusive ``flock`` on ``<state.db>.lock``: two daemons never share a state. The
    kernel releases it when the process dies, however it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LiveConfigError(
                f"another daemon holds {self.path}; one daemon per state.db"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def state_path(cfg: AppConfig) -> Path:
    """Where the daemon's journal lives."""
    return cfg.data.dir / cfg.live.state_db


def check_credentials(cfg: AppConfig, secrets: Secrets) -> None:
    """Exchange mode needs both API credentials in the environment."""
    if cfg.live.paper:
        return
    missing = [
        name
        for name, value in (
            ("CRYPTORLPM_EXCHANGE_API_KEY", secrets.exchange_api_key),
            ("CRYPTORLPM_EXCHANGE_SECRET", secrets.exchange_secret),
        )
        if value is None or not value.get_secret_value()
    ]
    if missing:
        raise LiveConfigError(
            f"trading on {cfg.exchange.id} needs {' and '.join(missing)} in the environment "
            "(testnet keys when [exchange].sandbox = true), or run with --paper"
        )


async def run_daemon(
    cfg: AppConfig,
    secrets: Secrets,
    policy_factory: PolicyFactory,
    *,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    alerts_factory: AlertsFactory | None = None,
    guard_clock: GuardClock | None = None,
) -> DaemonResult:
    """Run the live daemon until stopped (see the module docstring).

    ``guard_clock``: the clock bans and request weight are measured on (default: the
    exchange's clock as the daemon estimates it); tests drive one.
    """
    check_credentials(cfg, secrets)
    dashboard = make_dashboard(cfg)
    stop = stop or asyncio.Event()
    path = state_path(cfg)
    with StateLock(path):
        if dashboard is not None:
            _bind(dashboard)
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _on_signal, stop, sig)
        try:
            return await _run(
                cfg, secrets, policy_factory, stop, path, alerts_factory, guard_clock, dashboard
            )
        finally:
            if dashboard is not None:
                await dashboard.close()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)


def make_dashboard(cfg: AppConfig) -> DashboardServer | None:
    """The web dashboard when ``[dashboard].enabled``; raises :class:`LiveConfigError` (one
    line naming the variable) when it listens beyond loopback without its token."""
    if not cfg.dashboard.enabled:
        return None
    from bot.dashboard import DashboardConfigError, DashboardServer

    try:
        return DashboardServer.from_config(cfg, os.environ, cfg.live.state_db)
    except DashboardConfigError as exc:
        raise LiveConfigError(str(exc)) from None


def _bind(dashboard: DashboardServer) -> None:
    from bot.dashboard import DashboardConfigError

    try:
        dashboard.bind()
    except DashboardConfigError as exc:
        raise LiveConfigError(str(exc)) from None


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.warning("%s received: stopping after the current cycle", sig.name)
    stop.set()


async def _run(
    cfg: AppConfig,
    secrets: Secrets,
    policy_factory: PolicyFactory,
    stop: asyncio.Event,
    path: Path,
    alerts_factory: AlertsFactory | None,
    guard_clock: GuardClock | None,
    dashboard: DashboardServer | None,
) -> DaemonResult:
    live = cfg.live
    paper = live.paper
    clock: ExchangeTimeClock | None = None

    def estimate_ms() -> int:
        return clock.now_ms() if clock is not None and clock.synced else _wall_ms()

    async def sleep_ms(ms: int) -> None:
        await asyncio.sleep(max(ms, 0) / 1000 / live.clock_speed)

    async with contextlib.AsyncExitStack() as stack:
        journal = await Journal.open(path)
        stack.push_async_callback(journal.close)
        market = await MarketStore.open(cfg.data.market_path)
        stack.push_async_callback(market.close)
        metrics = await MetricStore.open(cfg.data.metrics_path)
        stack.push_async_callback(metrics.close)
        await check_stores(market, metrics, "exchange")
        exchange = create_exchange(
            cfg.exchange,
            None if paper else secrets,
            guard_clock=guard_clock or GuardClock(estimate_ms, sleep_ms),
        )
        stack.push_async_callback(exchange.close)
        guard: RequestGuard = exchange.guard
        retry = {"max_retries": cfg.exchange.max_retries, "base_delay_s": cfg.exchange.retry_base_s}
        try:  # one try: an exchange unreachable at start is reported at once, in one line
            markets = await exchange.load_markets()
        except Exception as exc:
            if not is_temporary(exc):
                raise
            raise ExchangeUnreachable(
                f"cannot reach {cfg.exchange.id}: {describe_error(exc)}; the daemon did not "
                "start (check the network, or [exchange].api_url)"
            ) from None
        try:
            rules = rules_from_markets(markets, cfg.market.coins, cfg.market.quote)
        except KeyError as exc:
            raise LiveConfigError(f"[market].coins: {exc.args[0]}") from None

        async def exchange_time() -> int:
            # Signed requests carry a timestamp the exchange checks against its clock: keep
            # ccxt's offset (``timeDifference``, what ``adjustForTimeDifference`` measures once)
            # fresh at every reading, so local drift never gets orders refused.
            server = int(await call_with_retries(exchange.fetch_time, **retry))
            exchange.options["timeDifference"] = exchange.milliseconds() - server
            return server

        clock = ExchangeTimeClock(
            exchange_time, speed=live.clock_speed, max_sleep_s=live.clock_poll_s
        )
        now = await clock.sync()
        log.info(
            "connected to %s (%s mode), exchange time %s",
            cfg.exchange.id,
            "paper" if paper else "exchange",
            ms_to_iso(now),
        )

        venue: Venue
        if paper:
            held = paper_balances(
                await _paper_cash(journal, cfg), cfg.market.quote, await journal.orders()
            )
            venue = SimVenue(
                cfg.broker,
                cfg.market.quote,
                rules,
                forming_candle_open(exchange.fetch_ohlcv, cfg.market.timeframe),
                cash=held.pop(cfg.market.quote),
                holdings=held,
            )
        else:
            venue = CcxtVenue(
                exchange,
                live,
                rules,
                cfg.market.quote,
                now_ms=clock.now_ms,
                exchange_time=clock.sync,
                max_retries=cfg.exchange.max_retries,
                base_delay_s=cfg.exchange.retry_base_s,
            )
        executor = Executor(venue, journal, clock.now_ms)
        slicer = Slicer(cfg.execution, timeframe_ms(cfg.market.timeframe), rules)
        executor.slicer = slicer if slicer.active else None
        incidents: list[str] = []  # told to the alert services once they run
        executor.on_incident = incidents.append
        executor.wait_until = lambda ts: clock.sleep_until(ts, stop)
        # The bars of the warm-up window go to the store first; the policy is built from it.
        driver = LiveDriver(cfg, executor, exchange, clock, market, metrics)
        written = await driver.catch_up(now - live.warmup_days * DAY_MS)
        log.info("stored %d new closed bars (warm-up window %d days)", written, live.warmup_days)
        policy, host = await policy_factory(cfg, market, metrics, clock.now_ms())
        if host is not None:
            stack.push_async_callback(host.close)
        else:  # the vote warms its modules itself; any other policy is warmed up here
            count = await warm_up_policy(
                policy, cfg, market, metrics, now - live.warmup_days * DAY_MS, driver.known_until
            )
            log.info("policy %s warmed up on %d stored closes", policy.name, count)
        engine = Engine(cfg, policy, cash=0.0, rules=rules)
        for command in (PauseTrading, ResumeTrading, FlattenPositions):
            engine.bus.subscribe(command, journal.record_command)
        driver.attach(engine)
        await _mark_latest(engine, market, cfg)

        async def reconcile_now(at_start: bool) -> Reconciliation:
            found = await reconcile(
                executor,
                engine.account,
                cfg.market.coins,
                now_ms=clock.now_ms(),
                step_ms=driver.step,
                resume_within_bars=live.resume_within_bars,
                at_start=at_start,
            )
            _log_reconciliation(found, at_start=at_start)
            return found

        report = await reconcile_now(True)
        await _restore(engine, journal)

        controls = DaemonControls(
            engine,
            journal,
            mode=executor.mode,
            now_ms=clock.now_ms,
            stop=stop,
            modules=host,
        )
        # The first close to trade is fixed before anyone can talk to the daemon.
        first = report.redo[-1] if report.redo else await _first_close(driver, journal)
        control_socket = ControlSocket(controls, cfg.data.dir / live.control_socket)
        await control_socket.start()
        stack.push_async_callback(control_socket.close)
        if dashboard is not None:
            await dashboard.start(controls)
        services = await alerts_factory(controls) if alerts_factory is not None else []
        for service in services:
            if hasattr(service, "attach"):
                service.attach(engine.bus)
            await service.start()
            stack.push_async_callback(service.close)
        _announce(services, "started", _summary(cfg, executor.mode, engine))
        for text in incidents:
            _announce(services, "error", text)
        executor.on_incident = lambda text: _announce(services, "error", text)

        reason = "stopped"
        loop = DaemonLoop(cfg, driver, engine, journal, host, services, stop, guard, reconcile_now)
        try:
            reason = await loop.run(first)
        finally:
            await journal.put("risk", _snapshot(engine))
            _announce(services, "stopped", f"{reason}; {_summary(cfg, executor.mode, engine)}")
        return DaemonResult(driver.cycles, engine.account.equity(), reason)


async def _first_close(driver: LiveDriver, journal: Journal) -> int:
    """The close the first cycle decides at.

    The latest close is traded at once when the daemon traded the one before it (it died in
    between: nothing is skipped) or when it starts within two grace periods of that close
    (a restart right after a close); otherwise the first cycle waits for the next close.
    """
    grace = int(driver.cfg.live.grace_s * 1000)
    now = await driver.clock.sync()
    latest = driver.grid.floor(now - grace)
    last = await journal.last_cycle()
    if last is not None and int(last["ts"]) >= latest:
        return int(last["ts"]) + driver.step
    if last is not None and int(last["ts"]) == latest - driver.step:
        return latest
    if now - latest <= 2 * grace:
        return latest
    return latest + driver.step


async def _paper_cash(journal: Journal, cfg: AppConfig) -> float:
    """The paper account's starting cash, fixed at its first start."""
    cash = float(await journal.get("paper_initial_cash", cfg.broker.initial_cash))
    await journal.put("paper_initial_cash", cash)
    return cash


async def _mark_latest(engine: Engine, market: MarketStore, cfg: AppConfig) -> None:
    """Give the account the latest stored close of every coin (before reconciliation)."""
    tf, name = cfg.market.timeframe, cfg.market.exchange
    for coin in cfg.market.coins:
        symbol = cfg.market.symbol(coin)
        last = await market.last_open_time(name, symbol, tf)
        if last is None:
            continue
        async for bar in market.iter_bars(name, [symbol], tf, start=last, end=last + 1):
            engine.account.on_bar(bar)


async def _restore(engine: Engine, journal: Journal) -> None:
    engine.planner.paused = bool(await journal.get("paused", False))
    if engine.planner.paused:
        log.warning("the operator's pause is still on: no orders until resumed")
    snapshot = await journal.get("risk")
    if snapshot and hasattr(engine.gate, "restore"):
        engine.gate.restore(snapshot)
        halted = getattr(engine.gate, "halted", None)
        if halted:
            log.warning("the kill switch is still tripped (%s): no orders until resumed", halted)


def _snapshot(engine: Engine) -> Any:
    return engine.gate.snapshot() if hasattr(engine.gate, "snapshot") else None


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _log_reconciliation(report: Reconciliation, *, at_start: bool) -> None:
    what = "start-up reconciliation" if at_start else "reconciliation"
    if report.balance_drift:
        drift = ", ".join(f"{a} {d:+.8g}" for a, d in report.balance_drift.items())
        log.log(
            logging.INFO if at_start else logging.WARNING,
            "%s: balances taken from the exchange (%s)",
            what,
            drift,
        )
    for name in ("resolved", "unsent", "resumed", "abandoned", "cancelled"):
        items = getattr(report, name)
        if items:
            log.warning("%s: %s %s", what, name, items)


def _summary(cfg: AppConfig, mode: str, engine: Engine) -> str:
    account = engine.account
    return (
        f"{mode} mode on {cfg.exchange.id}{' testnet' if cfg.exchange.sandbox else ''}, "
        f"{', '.join(cfg.market.coins)} every {cfg.market.timeframe}; "
        f"equity {account.equity():.2f} {account.quote}"
    )


def _announce(services: list[Any], kind: str, text: str) -> None:
    for service in services:
        method = getattr(service, kind, None)
        if method is not None:
            try:
                method(text)
            except Exception:  # alerts never stop trading
                log.exception("alert %s failed", kind)
