"""The daemon's main loop: one cycle per close, skipped while the exchange must not be asked.

At every close of ``[market].timeframe`` (plus ``grace_s``, on the exchange's clock) the loop
runs one cycle (:meth:`bot.live.driver.LiveDriver.run_cycle`), then reconciles every
``reconcile_every`` cycles or after an order of uncertain fate. Two states stop trading without
stopping the daemon, and each is told once in the log, in Telegram and in ``live status``:

- **a ban** (HTTP 418/429, see :mod:`bot.feed.guard`): until its ``Retry-After`` has passed no
  request leaves; each close on the local estimate of the exchange's clock is recorded as a
  ``skipped`` cycle. Once the ban has passed the loop reconciles before it trades again.
- **refused credentials** (-2015, -2014, -1022 at any time): trading halts for good in this
  process; closes are recorded as ``skipped`` until the operator fixes the key and restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.engine.kernel import Engine
from bot.feed.exchange import describe_error
from bot.feed.guard import RequestGuard
from bot.live.control import ModuleHost
from bot.live.driver import LiveDriver
from bot.live.executor import LiveTradingError
from bot.live.reconcile import Reconciliation
from bot.store.journal import Journal
from bot.timeframes import ms_to_iso
from config.schema import AppConfig

log = logging.getLogger(__name__)

STOPPED = "stopped by signal or operator"


class DaemonLoop:
    """Runs cycles until stopped (see the module docstring)."""

    def __init__(
        self,
        cfg: AppConfig,
        driver: LiveDriver,
        engine: Engine,
        journal: Journal,
        host: ModuleHost | None,
        services: list[Any],
        stop: asyncio.Event,
        guard: RequestGuard,
        reconcile_now: Callable[[bool], Awaitable[Reconciliation]],
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.engine = engine
        self.journal = journal
        self.host = host
        self.services = services
        self.stop = stop
        self.guard = guard
        self.reconcile_now = reconcile_now
        self.halt: str | None = None
        """Why trading halted for good in this process (refused credentials)."""
        self.skipped = 0
        self._banned = False
        self._shown: dict[str, Any] | None = None

    async def run(self, first: int) -> str:
        """Cycles from the close ``first`` on; returns why the loop ended."""
        await self.journal.put("trading_halt", None)
        driver, live = self.driver, self.cfg.live
        grace = int(live.grace_s * 1000)
        ts = first
        while not self.stop.is_set():
            if self._blocked():
                # During a ban not even the clock may be asked: the local estimate decides.
                confirm = self.guard.banned_for_ms() <= 0
                if not await driver.clock.sleep_until(ts + grace, self.stop, confirm=confirm):
                    return STOPPED
                await self._skip(ts, self._block_reason())
                ts = max(ts, driver.grid.floor(driver.clock.now_ms() - grace)) + driver.step
                continue
            if self._banned:  # the ban has passed: the exchange's truth before trading
                if not await self._reconcile():
                    if not await driver.clock.sleep_until(ts + grace, self.stop):
                        return STOPPED
                    await self._skip(ts, "reconciliation after the ban failed; trying again")
                    ts += driver.step
                    continue
                self._banned = False
                self._announce("notify", "the exchange's ban has passed: reconciled, trading again")
            log.debug("next cycle at the close of %s", ms_to_iso(ts))
            if not await driver.clock.sleep_until(ts + grace, self.stop):
                return STOPPED
            ts = self._catch_up(ts)
            if self._blocked():
                continue
            if self.host is not None:
                for line in await self.host.between_cycles(driver.clock.now_ms()):
                    log.info("%s", line)
                    if ": retraining " in line and "started" not in line:
                        self._announce("notify", line)  # the gate's verdict and its reason
            try:
                report = await driver.run_cycle(ts)
            except LiveTradingError as exc:
                await self._halt(str(exc))
                ts += driver.step
                continue
            if report.error:
                self._announce("error", f"cycle {ms_to_iso(ts)} failed: {report.error}")
            await self.journal.put("risk", _snapshot(self.engine))
            await self._show_guard()
            executor = driver.executor
            if driver.cycles % live.reconcile_every == 0 or executor.needs_reconcile:
                executor.needs_reconcile = False
                await self._reconcile()
            if live.max_cycles is not None and driver.cycles >= live.max_cycles:
                return f"max_cycles ({live.max_cycles}) reached"
            ts += driver.step
        return STOPPED

    def _catch_up(self, ts: int) -> int:
        # Late or not is the exchange's word (the reading that just confirmed the close), not
        # the local estimate: a process descheduled between the two must not skip a bar.
        driver = self.driver
        latest = driver.grid.floor(driver.clock.reading_ms - int(self.cfg.live.grace_s * 1000))
        if latest > ts:
            log.warning(
                "woke %d bar(s) late: skipping to %s",
                (latest - ts) // driver.step,
                ms_to_iso(latest),
            )
            return latest
        return ts

    def _blocked(self) -> bool:
        """Whether no request may go out now (a ban, or a halt); tells it once."""
        if self.halt is not None:
            return True
        left = self.guard.banned_for_ms()
        if left > 0 and not self._banned:
            self._banned = True
            ban = self.guard.ban
            assert ban is not None
            text = (
                f"the exchange banned requests ({ban.detail}): no request and no trading "
                f"until {ms_to_iso(ban.until_ms)}; cycles are skipped, then the daemon "
                "reconciles and trades again"
            )
            log.error("%s", text)
            self._announce("error", text)
        return left > 0

    def _block_reason(self) -> str:
        if self.halt is not None:
            return f"trading halted: {self.halt}"
        ban = self.guard.ban
        return "exchange ban" if ban is None else f"exchange ban until {ms_to_iso(ban.until_ms)}"

    async def _skip(self, ts: int, reason: str) -> None:
        """Record the close ``ts`` as a skipped cycle with the reason."""
        now = self.driver.clock.now_ms()
        await self.journal.start_cycle(ts, now)
        await self.journal.finish_cycle(ts, "skipped", now, error=reason)
        await self._show_guard()
        self.skipped += 1
        log.warning("cycle %s skipped: %s", ms_to_iso(ts), reason)

    async def _halt(self, reason: str) -> None:
        self.halt = reason
        await self.journal.put("trading_halt", reason)
        log.error("%s", reason)
        self._announce("error", reason)

    async def _reconcile(self) -> bool:
        """Reconcile now; False when it could not (the reason is logged, a halt recorded)."""
        try:
            await self.reconcile_now(False)
            return True
        except LiveTradingError as exc:
            await self._halt(str(exc))
        except Exception as exc:
            log.error("reconciliation failed: %s", describe_error(exc))
        return False

    async def _show_guard(self) -> None:
        """Keep the guard's state (ban, weight) in state.db for ``live status``."""
        shown = self.guard.snapshot()
        if shown != self._shown:
            self._shown = shown
            await self.journal.put("exchange_guard", shown)

    def _announce(self, kind: str, text: str) -> None:
        for service in self.services:
            method = getattr(service, kind, None)
            if method is not None:
                try:
                    method(text)
                except Exception:  # alerts never stop trading
                    log.exception("alert %s failed", kind)


def _snapshot(engine: Engine) -> Any:
    return engine.gate.snapshot() if hasattr(engine.gate, "snapshot") else None
