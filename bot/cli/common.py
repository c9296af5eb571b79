"""Shared pieces of the CLI: config option, store opening, progress bars, error reporting."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.rule import Rule
from rich.table import Column, Table

from bot.store import MarketStore, MetricStore
from config import AppConfig, ConfigError, load_config

T = TypeVar("T")

PIPED_WIDTH = 10_000
"""Console width when stdout is not a terminal: lines are never wrapped for a pipe or a file."""


def make_console() -> Console:
    """The CLI's console on stdout. In a terminal it follows the terminal's width; piped or
    redirected (and ``COLUMNS`` not set) it does not wrap at all, so every line, error and id
    stays whole for ``grep`` and log files."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPED_WIDTH)
    return console


console = make_console()


def rule(title: str) -> None:
    """A section rule, at most 100 columns wide (a pipe has no width to fill)."""
    console.print(Rule(title), width=min(console.width, 100))


def id_column(header: str, ids: Iterable[str]) -> Column:
    """A table column for identifiers: never shortened with an ellipsis nor folded (other
    columns give way; print the table with :func:`print_table`)."""
    return Column(header, no_wrap=True, min_width=max((len(i) for i in ids), default=len(header)))


def print_table(table: Table) -> None:
    """Print ``table`` without cropping: a table wider than a narrow terminal wraps there
    rather than losing the end of its lines."""
    console.print(table, crop=False)


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: the bundled config/demo.toml)"),
]


def load(config_path: Path | None) -> AppConfig:
    """Load the config or exit with its error message."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers happy


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` as an error and exit with ``code``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], *errors: type[Exception]) -> T:
    """Run an async command; the listed exception types become clean one-line errors."""
    try:
        return asyncio.run(coro_fn())
    except errors as exc:
        fail(str(exc))
        raise  # unreachable


def require_stores(cfg: AppConfig) -> None:
    """Exit with one line when ``[data].dir`` holds no store yet: a command that only reads
    must not create an empty data folder (a typo in the path would go unnoticed)."""
    folder = cfg.data.dir
    if not folder.is_dir():
        fail(
            f"data dir {folder} does not exist ([data].dir); fill it first with "
            "`cryptorlpm data synth`, `data import` or `data download`"
        )
    if not cfg.data.market_path.exists() and not cfg.data.metrics_path.exists():
        fail(
            f"data dir {folder} holds no market.db or metrics.db; fill it first with "
            "`cryptorlpm data synth`, `data import` or `data download`"
        )


@asynccontextmanager
async def open_stores(cfg: AppConfig) -> AsyncIterator[tuple[MarketStore, MetricStore]]:
    """Open ``market.db`` and ``metrics.db`` of ``cfg`` for the duration of the block."""
    market = await MarketStore.open(cfg.data.market_path)
    try:
        metrics = await MetricStore.open(cfg.data.metrics_path)
        try:
            yield market, metrics
        finally:
            await metrics.close()
    finally:
        await market.close()


def progress_bar() -> Progress:
    """A rich progress bar with a description, a bar, done/total and time remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def setup_logging(verbose: bool, *, json_lines: bool = False) -> None:
    """Plain, timestamped log lines (or JSON lines) on stderr."""
    from bot.logs import setup_logging as setup

    setup(verbose, json_lines=json_lines)
