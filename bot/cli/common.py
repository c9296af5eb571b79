"""Shared pieces of the CLI: config option, store opening, progress bars, error reporting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bot.store import MarketStore, MetricStore
from config import AppConfig, ConfigError, load_config

T = TypeVar("T")

console = Console()

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
