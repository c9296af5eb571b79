"""The running daemon's control service, and the local socket the CLI reaches it through.

:class:`DaemonControls` implements :class:`bot.control.Controls` over the daemon's parts (engine,
journal, module host); Telegram and the control socket both call it. The socket is a Unix
socket under ``[data].dir`` (only the daemon's user can open it) speaking one JSON object per
line: ``{"command": "pause", "args": {}}`` answered ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bot.control import ControlError, Controls
from bot.engine.kernel import Engine
from bot.events import (
    FlattenPositions,
    OperatorCommand,
    PauseTrading,
    ResumeTrading,
    TargetWeights,
)
from bot.live.operations import (
    AUDIT_SCAN,
    DIAGNOSTIC_DECISIONS,
    latest_audit,
    module_diagnostics,
    readiness,
)
from bot.live.status import trading_lines
from bot.store.journal import Journal
from bot.timeframes import ms_to_iso, timeframe_ms

log = logging.getLogger(__name__)

COMMANDS = (
    "status",
    "balance",
    "weights",
    "modules",
    "pause",
    "resume",
    "flatten",
    "stop",
    "retrain",
    "plug",
    "unplug",
    "rollback",
    "audit",
    "regime",
    "preview_plug",
    "preview_unplug",
    "why",
)


class ModuleHost(Protocol):
    """The Crypto Modules side of the daemon (see ``strategies.live``): plugging, swapping,
    retraining. Requests are applied between two cycles by :meth:`between_cycles`."""

    def describe(self) -> list[dict[str, Any]]:
        """One dict per plugged module (``coin``, ``model_id``, ``ready``, ...)."""
        ...

    def preview_plug(self, coin: str, model_id: str | None) -> dict[str, Any]:
        """What a plug would change (``action``, ``model_id``, ``current``, ``validation``,
        ``created_at``, ``activates``), changing nothing; raises ``ControlError`` as the
        request would."""
        ...

    def preview_unplug(self, coin: str) -> dict[str, Any]:
        """What an unplug would change (``model_id``, ``remaining``), changing nothing."""
        ...

    def request_plug(self, coin: str, model_id: str | None, now_ms: int) -> str: ...

    def request_unplug(self, coin: str) -> str: ...

    def request_rollback(self, coin: str, now_ms: int) -> str: ...

    def request_retrain(self, coin: str, now_ms: int) -> str: ...

    async def between_cycles(self, now_ms: int) -> list[str]:
        """Apply pending swaps, plugs and unplugs; start due retraining. Returns log lines."""
        ...

    async def close(self) -> None: ...


class DaemonControls(Controls):
    """Operator controls over a running daemon's engine, journal and modules."""

    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        *,
        mode: str,
        now_ms: Callable[[], int],
        stop: asyncio.Event,
        modules: ModuleHost | None = None,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.mode = mode
        self.now_ms = now_ms
        self._stop = stop
        self.host = modules
        self.by = "operator"
        """Who the commands are from, as journalled."""
        self.last_target: TargetWeights | None = None
        engine.bus.subscribe(TargetWeights, self._remember_target)

    def _remember_target(self, target: TargetWeights) -> None:
        self.last_target = target

    async def status(self) -> dict[str, Any]:
        """Mode, pause/halt state, cycles, last cycle and error, equity."""
        last = await self.journal.last_cycle()
        cycles = await self.journal.cycles()
        errors = [c for c in cycles if c.get("error") and c["status"] == "failed"]
        return {
            "mode": self.mode,
            "paused": self.engine.planner.paused,
            "halted": getattr(self.engine.gate, "halted", None),
            "cycles": len(cycles),
            "last_cycle": None if last is None else ms_to_iso(int(last["ts"])),
            "last_cycle_status": None if last is None else last["status"],
            "last_error": errors[-1]["error"] if errors else None,
            "equity": round(self.engine.account.equity(), 2),
            "quote": self.engine.account.quote,
            "trading": await trading_lines(self.journal),
        }

    async def balance(self) -> dict[str, Any]:
        """Equity, cash and every position with its price, value and weight."""
        account = self.engine.account
        equity = account.equity()
        positions = []
        for coin, amount in sorted(account.holdings.items()):
            price = account.prices.get(coin, 0.0)
            value = amount * price
            positions.append(
                {
                    "coin": coin,
                    "amount": amount,
                    "price": price,
                    "value": round(value, 2),
                    "weight": round(value / equity, 4) if equity > 0 else 0.0,
                }
            )
        return {
            "quote": account.quote,
            "equity": round(equity, 2),
            "cash": round(account.cash, 2),
            "positions": positions,
        }

    async def weights(self) -> dict[str, Any]:
        """The last decision's target weights and the current weights."""
        target = self.last_target
        actual = {k: round(v, 4) for k, v in self.engine.account.weights().items()}
        return {
            "target": {} if target is None else {k: round(v, 4) for k, v in target.weights},
            "actual": actual,
            "ts": None if target is None else ms_to_iso(target.ts),
        }

    async def modules(self) -> list[dict[str, Any]]:
        """The plugged Crypto Modules, each with its readiness (warm-up done and a recent bar,
        by the daemon's clock) and its diagnostics over its latest journalled decisions."""
        if self.host is None:
            return []
        rows = self.host.describe()
        decisions = await self.journal.decisions(limit=DIAGNOSTIC_DECISIONS)
        now, step = self.now_ms(), timeframe_ms(self.engine.cfg.market.timeframe)
        for row in rows:
            coin = row["coin"]
            bar = self.engine.account.last_bars.get(coin)
            last_close = None if bar is None else int(bar.ts)
            row["last_bar"] = None if last_close is None else ms_to_iso(last_close)
            row["readiness"] = readiness(bool(row.get("ready")), last_close, now, step)
            row["diagnostics"] = module_diagnostics(decisions, coin, row.get("model_id"))
            for key in ("last_decision_ts", "retraining_since"):
                if row.get(key) is not None:
                    row[key] = ms_to_iso(int(row[key]))
        return rows

    async def audit(self, closes: int = 5) -> dict[str, Any]:
        """The guardrail audit of the latest ``closes`` closes at which the guardrails changed
        a weight or the market's filters trimmed an order (see
        :func:`bot.live.operations.latest_audit`)."""
        if not 1 <= int(closes) <= 50:
            raise ControlError(f"audit: closes must be 1..50, got {closes}")
        decisions = await self.journal.decisions(limit=AUDIT_SCAN)
        return latest_audit(decisions, int(closes))

    async def regime(self) -> dict[str, Any]:
        """What the running policy's regime controller says now: ``policy``, ``controller``
        (whether it has one) and ``state`` (its ``regime_state()``: ``variants`` coin ->
        variant -> weight, ``exposure``, ``features``, ...; None before its first decision)."""
        policy = self.engine.policy
        name = str(getattr(policy, "name", type(policy).__name__))
        regime_state = getattr(policy, "regime_state", None)
        if not callable(regime_state):
            return {"policy": name, "controller": False, "state": None}
        return {"policy": name, "controller": True, "state": regime_state()}

    async def _command(self, command: OperatorCommand) -> None:
        """Hand ``command`` to the engine; the journal (an observer) keeps it."""
        self.engine.command(command)
        await self.engine.bus.drain()

    async def pause(self) -> str:
        """No new orders until resumed; decisions go on."""
        await self._command(PauseTrading(self.now_ms(), self.by))
        log.warning("paused by the operator: no new orders until resumed")
        return "paused: decisions go on, no orders are sent until /resume"

    async def resume(self) -> str:
        """Orders again; also clears a tripped kill switch."""
        halted = self.engine.gate.halted
        await self._command(ResumeTrading(self.now_ms(), self.by))
        log.warning(
            "resumed by the operator%s", f" (kill switch cleared: {halted})" if halted else ""
        )
        return "resumed" + (f"; kill switch cleared ({halted})" if halted else "")

    async def flatten(self) -> str:
        """Sell every coin at the next decision, then halt until resumed."""
        await self._command(FlattenPositions(self.now_ms(), self.by))
        log.warning("flatten asked by the operator: every coin is sold at the next decision")
        return "flatten: every coin is sold at the next decision, then no orders until /resume"

    async def stop(self) -> str:
        """Stop after the current cycle."""
        self._stop.set()
        log.warning("stop requested by the operator")
        return "stopping after the current cycle"

    def _host(self) -> ModuleHost:
        if self.host is None:
            raise ControlError("this daemon runs a fixed-weight policy: it has no Crypto Modules")
        return self.host

    async def retrain(self, coin: str) -> str:
        """Retrain ``coin``'s module now (in a separate process)."""
        return self._host().request_retrain(coin.upper(), self.now_ms())

    async def plug(self, coin: str, model_id: str | None = None) -> str:
        """Plug ``coin``'s module at the next cycle."""
        return self._host().request_plug(coin.upper(), model_id, self.now_ms())

    async def preview_plug(self, coin: str, model_id: str | None = None) -> str:
        """What ``plug(coin, model_id)`` would change, in one message; changes nothing."""
        plan = self._host().preview_plug(coin.upper(), model_id)
        coin, model = plan["coin"], plan["model_id"]
        about = _model_facts(plan)
        if plan["current"] is None:
            text = f"Plug {coin}: {model}{about} joins the vote at the next cycle"
            text += f" ({self._holding(coin)})"
        elif plan["current"] == model:
            text = f"Reload {coin}: {model}{about} is loaded and warmed up again"
        else:
            text = f"Swap {coin}: {plan['current']} -> {model}{about} at the next cycle"
        if plan["activates"]:
            text += f"; {model} becomes {coin}'s active version (/rollback undoes it)"
        return text + "."

    async def preview_unplug(self, coin: str) -> str:
        """What ``unplug(coin)`` would change, in one message; changes nothing."""
        plan = self._host().preview_unplug(coin.upper())
        coin, left = plan["coin"], plan["remaining"]
        share = (
            f"the vote splits over {len(left)} module(s) ({', '.join(left)})"
            if left
            else "no module is left: the whole portfolio goes to cash"
        )
        return (
            f"Unplug {coin} ({plan['model_id']}) at the next cycle: the rebalance sells "
            f"{coin} ({self._holding(coin)}); {share}."
        )

    def _holding(self, coin: str) -> str:
        account = self.engine.account
        amount = account.holdings.get(coin, 0.0)
        if not amount:
            return f"no {coin} held now"
        value, equity = amount * account.prices.get(coin, 0.0), account.equity()
        share = f", {value / equity:.1%} of equity" if equity > 0 else ""
        return f"{amount:.8g} {coin} held now{share}"

    async def unplug(self, coin: str) -> str:
        """Unplug ``coin``'s module at the next cycle."""
        return self._host().request_unplug(coin.upper())

    async def rollback(self, coin: str) -> str:
        """Swap ``coin``'s previous module version back in at the next cycle."""
        return self._host().request_rollback(coin.upper(), self.now_ms())

    async def why(self, coin: str) -> dict[str, Any]:
        """``coin``'s latest decision with its explanation, from the journal."""
        coin = coin.upper()
        found = await self.journal.latest_explanation(coin)
        if found is None:
            plugged = [m["coin"] for m in (self.host.describe() if self.host else [])]
            if self.host is None:
                raise ControlError("this daemon's policy explains no decisions (no Crypto Modules)")
            if coin not in plugged:
                raise ControlError(
                    f"no Crypto Module for {coin}; plugged: {', '.join(plugged) or 'none'}"
                )
            raise ControlError(
                f"no explained decision of {coin} yet: explanations come with the first "
                "decision its module takes from its networks (after warm-up)"
            )
        entry = found["explanation"]
        weight = found["allowed"].get(coin, found["target"].get(coin))
        return {"coin": coin, "ts": ms_to_iso(found["ts"]), "weight": weight, **entry}


def _model_facts(plan: dict[str, Any]) -> str:
    """`` (validation: SAM +0.12 vs buy and hold +0.05, trained 2024-01-01T12:00:00)``."""
    facts = []
    validation = plan.get("validation") or {}
    if "sam" in validation:
        text = f"validation log return {validation['sam']:+.3f}"
        if "buy_and_hold" in validation:
            text += f" vs buy and hold {validation['buy_and_hold']:+.3f}"
        facts.append(text)
    if plan.get("created_at"):
        facts.append(f"trained {plan['created_at']}")
    return f" ({', '.join(facts)})" if facts else ""


async def dispatch(controls: Controls, request: dict[str, Any]) -> dict[str, Any]:
    """Run one control request (``{"command": ..., "args": {...}}``) and wrap the answer."""
    command = request.get("command")
    if command not in COMMANDS:
        return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(COMMANDS)}"}
    args = request.get("args") or {}
    try:
        result = await getattr(controls, command)(**args)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    except TypeError as exc:
        return {"ok": False, "error": f"{command}: {exc}"}
    except Exception as exc:  # the daemon keeps running; the operator sees one line
        log.exception("control command %s failed", command)
        return {"ok": False, "error": f"{command} failed: {exc}"}
    return {"ok": True, "result": result}


class ControlSocket:
    """Serves :func:`dispatch` on a Unix socket (one JSON request per line)."""

    def __init__(self, controls: Controls, path: Path) -> None:
        self.controls = controls
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen (replacing a socket file a dead daemon left behind)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("expected a JSON object")
                except ValueError as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                else:
                    answer = await dispatch(self.controls, request)
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def send_command(path: Path, command: str, **args: Any) -> dict[str, Any]:
    """Ask the daemon listening on ``path``; raises ``ControlError`` when none listens."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(
            f"no daemon is listening on {path} (is `cryptorlpm live` running with this config?)"
        ) from exc
    try:
        writer.write(json.dumps({"command": command, "args": args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    if not line:
        raise ControlError("the daemon closed the connection without answering")
    return json.loads(line)
