"""``cryptorlpm live``: the trading daemon, its status, and commands to the running daemon."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bot.cli.common import console, fail, id_column, print_table
from config import AppConfig, ConfigError, apply_overrides, bundled_config_path, load_config

app = typer.Typer(
    help="The live daemon (Binance spot testnet by default, or --paper) and its controls.",
    invoke_without_command=True,
)

LiveConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config (default: the bundled config/testnet.toml)"),
]


OPTIONS = {"paper": "--paper", "max_cycles": "--max-cycles"}
"""The command-line options that set ``[live]`` keys, for error messages."""


def load_live(config: Path | None, **live_overrides: Any) -> AppConfig:
    """The daemon's config (default ``testnet.toml``) with ``[live]`` overrides applied and
    validated as the file is (``--max-cycles 0`` is refused like ``max_cycles = 0``)."""
    try:
        cfg = load_config(config or bundled_config_path("testnet.toml"))
        overrides = {f"live.{k}": v for k, v in live_overrides.items() if v is not None}
        if overrides:
            origins = {f"live.{k}": OPTIONS.get(k, f"--{k}") for k in live_overrides}
            cfg = apply_overrides(cfg, overrides, origins)
    except ConfigError as exc:
        fail(str(exc))
        raise
    return cfg


@app.callback()
def live(
    ctx: typer.Context,
    config: LiveConfigOption = None,
    paper: Annotated[
        bool, typer.Option("--paper", help="simulated fills on live prices; no API key needed")
    ] = False,
    max_cycles: Annotated[
        int | None, typer.Option(help="stop after this many cycles (default: run until stopped)")
    ] = None,
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="one JSON object per log line")
    ] = False,
) -> None:
    """Run the daemon: wake at every bar close, decide, trade, until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from bot.cli.live_run import run_live

    cfg = load_live(config, paper=True if paper else None, max_cycles=max_cycles)
    run_live(cfg, json_logs=json_logs)


@app.command()
def status(config: LiveConfigOption = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """What state.db says: balances, last cycle, last error, latest orders and refusals."""
    from bot.live.daemon import state_path
    from bot.live.status import read_status
    from bot.timeframes import ms_to_iso

    cfg = load_live(config)
    try:
        state = asyncio.run(read_status(state_path(cfg)))
    except FileNotFoundError as exc:
        fail(str(exc))
        return
    if as_json:
        console.print_json(json.dumps(state, default=str))
        return
    last = state["last_cycle"]
    console.print(f"state: {state['state_db']}")
    console.print(
        f"cycles: {state['cycles']}, last: "
        + (f"{ms_to_iso(last['ts'])} ({last['status']})" if last else "none")
        + (
            f", median latency {state['median_latency_ms']:.0f} ms"
            if state["median_latency_ms"]
            else ""
        )
    )
    console.print(f"paused: {state['paused']}, kill switch: {state['halted'] or 'not tripped'}")
    for line in state["trading"]:
        console.print(line)
    error = state["last_error"]
    console.print(
        f"last error: {ms_to_iso(error['ts']) + ' ' + error['error'] if error else 'none'}"
    )
    balances = Table("asset", "total", title="balances (last reconciliation or fill)")
    for asset, total in state["balances"].items():
        balances.add_row(asset, f"{total:.8g}")
    print_table(balances)
    orders = Table(
        "cycle",
        id_column("client id", (o["client_order_id"] for o in state["orders"])),
        "side",
        "amount",
        "status",
        "filled",
        "price",
    )
    for o in state["orders"]:
        orders.add_row(
            ms_to_iso(o["cycle_ts"]),
            o["client_order_id"],
            o["side"],
            f"{o['amount']:.8g}",
            o["status"],
            f"{o['filled']:.8g}",
            f"{o['average_price']:.8g}" if o["average_price"] else "",
        )
    print_table(orders)
    if state["refusals"]:
        refusals = Table("time", "rule", "asset", "wanted", "allowed", "detail", title="refusals")
        for r in state["refusals"]:
            refusals.add_row(
                ms_to_iso(r["ts"]),
                r["rule"],
                r["asset"],
                f"{r['wanted']:.4g}",
                f"{r['allowed']:.4g}",
                r["detail"],
            )
        print_table(refusals)


def _ask(
    config: Path | None, command: str, render: Callable[[Any], str] | None = None, **args: Any
) -> None:
    """Send ``command`` to the running daemon and print its answer (``render``: as text)."""
    from bot.control import ControlError
    from bot.live.control import send_command

    cfg = load_live(config)
    try:
        answer = asyncio.run(send_command(cfg.data.dir / cfg.live.control_socket, command, **args))
    except ControlError as exc:
        fail(str(exc))
        return
    if not answer.get("ok"):
        fail(str(answer.get("error")))
    result = answer.get("result")
    if render is not None:
        console.print(render(result), markup=False, highlight=False, soft_wrap=True)
    elif isinstance(result, str):
        console.print(result)
    else:
        console.print_json(json.dumps(result, default=str))


CoinArg = Annotated[str, typer.Argument(help="coin ticker, e.g. BTC")]


@app.command()
def pause(config: LiveConfigOption = None) -> None:
    """Stop sending orders (decisions go on) until `resume`."""
    _ask(config, "pause")


@app.command()
def resume(config: LiveConfigOption = None) -> None:
    """Send orders again (also clears a tripped kill switch)."""
    _ask(config, "resume")


@app.command()
def flatten(config: LiveConfigOption = None) -> None:
    """Sell every coin at the next decision, then send no order until `resume`."""
    _ask(config, "flatten")


@app.command()
def stop(config: LiveConfigOption = None) -> None:
    """Stop the daemon after its current cycle."""
    _ask(config, "stop")


@app.command()
def balance(config: LiveConfigOption = None) -> None:
    """The running daemon's equity, cash and positions."""
    _ask(config, "balance")


@app.command()
def weights(config: LiveConfigOption = None) -> None:
    """The last decision's target weights and the current weights."""
    _ask(config, "weights")


@app.command()
def modules(config: LiveConfigOption = None) -> None:
    """The plugged Crypto Modules."""
    _ask(config, "modules")


@app.command()
def audit(
    closes: Annotated[int, typer.Option(help="how many changed closes (1..50)")] = 5,
    config: LiveConfigOption = None,
) -> None:
    """The latest closes the guardrails changed: wanted vs allowed weights, rules, trims."""
    from bot.telegram.format import format_audit

    _ask(config, "audit", render=format_audit, closes=closes)


@app.command()
def regime(config: LiveConfigOption = None) -> None:
    """The regime controller's variant weights and the manager's exposure (mars policies)."""
    from bot.telegram.format import format_regime

    _ask(config, "regime", render=format_regime)


@app.command()
def plug(
    coin: CoinArg,
    model: Annotated[str | None, typer.Option(help="model id (default: the active one)")] = None,
    config: LiveConfigOption = None,
) -> None:
    """Plug a coin's Crypto Module into the running portfolio (at the next cycle)."""
    _ask(config, "plug", coin=coin, model_id=model)


@app.command()
def unplug(coin: CoinArg, config: LiveConfigOption = None) -> None:
    """Unplug a coin's module (its holding is sold by the next rebalance)."""
    _ask(config, "unplug", coin=coin)


@app.command()
def retrain(coin: CoinArg, config: LiveConfigOption = None) -> None:
    """Retrain a coin's module now; the validation gate decides the swap."""
    _ask(config, "retrain", coin=coin)


@app.command()
def rollback(coin: CoinArg, config: LiveConfigOption = None) -> None:
    """Swap a coin's previous module version back in (at the next cycle)."""
    _ask(config, "rollback", coin=coin)


@app.command()
def why(coin: CoinArg, config: LiveConfigOption = None) -> None:
    """Why the running daemon's module decided what it did for a coin (latest decision)."""
    _ask(config, "why", coin=coin)


@app.command()
def diff(config: LiveConfigOption = None) -> None:
    """Replay what the daemon saw; list closes decided otherwise, with why (exit 1 if any)."""
    from bot.cli.live_run import build_policy
    from bot.live.daemon import state_path
    from bot.live.diff import diff_decisions
    from bot.timeframes import ms_to_iso

    cfg = load_live(config)
    try:
        report = asyncio.run(diff_decisions(cfg, state_path(cfg), build_policy))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    console.print(
        f"{report.compared} decisions compared, {len(report.differences)} differ "
        f"({state_path(cfg)})"
    )
    if not report.differences:
        return

    def weights(values: dict[str, float] | None) -> str:
        if values is None:
            return "no new target"
        return ", ".join(f"{a} {w:.4f}" for a, w in sorted(values.items()) if abs(w) > 1e-12)

    table = Table("close", "live", "replay", "why", title="decisions that differ")
    for d in report.differences:
        table.add_row(ms_to_iso(d.ts), weights(d.live), weights(d.replay), d.why)
    print_table(table)
    raise typer.Exit(1)
