"""``cryptorlpm explain``: why the Crypto Modules decided what they did (a table and a plot)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bot.cli.common import ConfigOption, console, fail, load, print_table, run

TimeOption = Annotated[
    str | None, typer.Option(help="UTC date or date-time, e.g. 2021-11-05T12:00")
]


def _time(option: str, value: str | None) -> int | None:
    """Epoch ms of an ISO time option, or a one-line error naming it."""
    from bot.timeframes import to_ms

    if value is None:
        return None
    try:
        return to_ms(value)
    except ValueError:
        fail(f"{option} {value!r}: expected a UTC date or date-time like 2021-11-05T12:00")
    return None  # unreachable


def explain(
    path: Annotated[
        Path,
        typer.Argument(help="a backtest run folder (cryptorlpm demo --out) or a live state dir"),
    ],
    coin: Annotated[str | None, typer.Option(help="only this coin, e.g. BTC")] = None,
    at: TimeOption = None,
    start: Annotated[str | None, typer.Option("--from", help="range start (UTC)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="range end (UTC)")] = None,
    top: Annotated[int, typer.Option(min=1, help="inputs shown per decision")] = 8,
    limit: Annotated[
        int, typer.Option(min=1, help="decisions explained per coin in a range")
    ] = 300,
    out: Annotated[Path | None, typer.Option(help="plot folder (default: PATH/explain)")] = None,
    config: ConfigOption = None,
) -> None:
    """Why each Crypto Module decided what it did: the inputs (price channels, on-chain metrics
    through the DRU's components, the EAM's signal) ranked by their attribution to the chosen
    action, at a time (--at, default: the last decision) or over a range (--from/--to), as a
    table and a plot."""
    from backtest.explain_run import ExplainError, explain_backtest_run, explain_state_dir

    if at is not None and (start is not None or end is not None):
        fail("--at asks for one decision; --from/--to for a range: give one or the other")
    at_ms, start_ms, end_ms = _time("--at", at), _time("--from", start), _time("--to", end)
    coin = coin.upper() if coin else None
    if not path.exists():
        fail(f"{path}: no such folder (a backtest run folder or a live state dir)")
    live = (path / "state.db").exists() or (path.is_file() and path.name.endswith(".db"))
    if not live and not (path / "models").is_dir():
        fail(f"{path}: neither a live state dir (state.db) nor a backtest run folder (models/)")
    single = at_ms is not None or (start_ms is None and end_ms is None)
    if live:
        found = run(lambda: explain_state_dir(path, coin, at_ms, start_ms, end_ms), ExplainError)
    else:
        cfg = load(config)
        found = run(
            lambda: explain_backtest_run(
                cfg, path, coin, at_ms, start_ms, end_ms, limit=1 if single else limit
            ),
            ExplainError,
        )
    if single and at_ms is None:  # no time given: each coin's last decision
        found = {c: rows[-1:] for c, rows in found.items()}
    folder = out or (path if path.is_dir() else path.parent) / "explain"
    folder.mkdir(parents=True, exist_ok=True)
    _show(found, single, top, folder)


def _show(found: dict, single: bool, top: int, folder: Path) -> None:
    from backtest.explain_run import attribution_rows
    from backtest.plots import plot_attributions, plot_drivers
    from bot.timeframes import ms_to_iso

    for coin, rows in sorted(found.items()):
        if single:
            decision = rows[-1]
            q = ", ".join(f"{a.replace('_', ' ')} {v:+.4f}" for a, v in decision.q.items())
            title = f"{coin} at {ms_to_iso(decision.ts)}: {decision.action.replace('_', ' ')}"
            table = Table(title=f"{title} (Q: {q})", title_justify="left")
            table.add_column("rank", justify="right")
            table.add_column("input")
            table.add_column("attribution", justify="right")
            for rank, (name, value) in enumerate(decision.inputs[:top], 1):
                table.add_row(str(rank), name, f"{value:+.5f}")
            print_table(table)
            stamp = datetime.fromtimestamp(decision.ts / 1000, UTC).strftime("%Y%m%dT%H%M")
            plot = plot_drivers(
                decision.inputs[:top], folder / f"explain_{coin}_{stamp}.png", title=title
            )
        else:
            frame = attribution_rows(rows)
            by_input = frame.groupby("input")["attribution"]
            first = frame.loc[frame.groupby("ts")["attribution"].apply(lambda s: s.abs().idxmax())]
            firsts = first["input"].value_counts()
            summary = (
                by_input.agg(mean="mean", magnitude=lambda s: s.abs().mean())
                .sort_values("magnitude", ascending=False)
                .head(top)
            )
            holding = sum(d.action == "all_coin" for d in rows)
            span = f"{ms_to_iso(rows[0].ts)} .. {ms_to_iso(rows[-1].ts)}"
            table = Table(
                title=f"{coin}: {len(rows)} decisions {span}, {holding} in the coin",
                title_justify="left",
            )
            for name, justify in (("input", "left"), ("mean", "right"), ("mean |attr|", "right")):
                table.add_column(name, justify=justify)  # type: ignore[arg-type]
            table.add_column("ranked first", justify="right")
            for name, row in summary.iterrows():
                table.add_row(
                    str(name),
                    f"{row['mean']:+.5f}",
                    f"{row['magnitude']:.5f}",
                    str(int(firsts.get(name, 0))),
                )
            print_table(table)
            plot = plot_attributions(
                frame, folder / f"explain_{coin}.png", title=f"What drove {coin}'s module, {span}"
            )
        console.print(f"plot: {plot}")
