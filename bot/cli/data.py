"""``cryptorlpm data ...``: fill and inspect the stores (synthetic, CSV import, download)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bot.cli.common import ConfigOption, console, fail, load, open_stores, progress_bar, run
from bot.feed import dataset
from bot.store import MarketStore, MetricStore
from bot.timeframes import ms_to_iso, to_ms
from config import AppConfig

app = typer.Typer(help="Fill and inspect market.db and metrics.db.", no_args_is_help=True)


@app.command("synth")
def synth(config: ConfigOption = None) -> None:
    """Generate the synthetic market (deterministic by seed) into the stores and resample it."""
    cfg = load(config)

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            with console.status("generating the synthetic market"):
                await dataset.build_synthetic(cfg, market, metrics)
            print_resampling(cfg, await dataset.resample_coins(cfg, market))
            await print_coverage(cfg, market, metrics)

    run(main)


@app.command("import")
def import_(
    dir: Annotated[Path, typer.Option("--dir", help="folder with ohlcv/ and onchain/")],
    config: ConfigOption = None,
) -> None:
    """Import ccxt-shaped candle CSVs and daily metric CSVs (a folder like ../shared/data)."""
    from bot.feed.validation import DataValidationError

    cfg = load(config)
    if not dir.is_dir():
        fail(f"--dir {dir}: not a folder")

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            with progress_bar() as bar:
                task = bar.add_task("importing files", total=None)
                await dataset.import_csv_dir(
                    cfg,
                    dir,
                    market,
                    metrics,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            print_resampling(cfg, await dataset.resample_coins(cfg, market))
            await print_coverage(cfg, market, metrics)

    run(main, DataValidationError, FileNotFoundError)


@app.command("resample")
def resample(
    config: ConfigOption = None,
    to: Annotated[
        str | None, typer.Option(help="target timeframe (default: market.timeframe)")
    ] = None,
) -> None:
    """Resample stored base-timeframe candles to the strategy timeframe, gaps kept explicit."""
    cfg = load(config)
    if to is not None:
        cfg = cfg.model_copy(update={"market": cfg.market.model_copy(update={"timeframe": to})})

    async def main() -> None:
        async with open_stores(cfg) as (market, _):
            summaries = await dataset.resample_coins(cfg, market)
        print_resampling(cfg, summaries)
        if not summaries:
            console.print("nothing to resample")

    run(main)


@app.command("download")
def download(
    config: ConfigOption = None,
    since: Annotated[
        str | None, typer.Option(help="first day, YYYY-MM-DD (default: market.start)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="last day, exclusive (default: now)")] = None,
    metrics: Annotated[bool, typer.Option(help="also download Santiment metrics")] = True,
) -> None:
    """Download candles through ccxt and metrics through sanpy (needs internet; resumes)."""
    from bot.feed.download import DownloadError, download_all

    cfg = load(config)
    since_ms = to_ms(since) if since else to_ms(cfg.market.start)
    until_ms = to_ms(until) if until else None

    async def main() -> None:
        async with open_stores(cfg) as (market, metric_store):
            with progress_bar() as bar:
                await download_all(
                    cfg,
                    market,
                    metric_store,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    with_metrics=metrics,
                    progress=bar,
                )
            print_resampling(cfg, await dataset.resample_coins(cfg, market))
            await print_coverage(cfg, market, metric_store)

    run(main, DownloadError)


@app.command("show")
def show(config: ConfigOption = None) -> None:
    """Coverage per stored series: first, last, rows and gaps."""
    cfg = load(config)

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            await print_coverage(cfg, market, metrics)

    run(main)


def print_resampling(cfg: AppConfig, summaries: list[dataset.ResampleSummary]) -> None:
    """One line per resampled coin: bars written and bins with missing source candles."""
    for s in summaries:
        note = f", {s.incomplete} with missing {cfg.market.base_timeframe} candles (kept)"
        console.print(
            f"resampled {s.symbol}: {s.bars} {cfg.market.timeframe} bars"
            + (note if s.incomplete else "")
        )


def _when(ms: int) -> str:
    return ms_to_iso(ms)[:16].replace("T", " ")


async def print_coverage(cfg: AppConfig, market: MarketStore, metrics: MetricStore) -> None:
    """Print the candle and metric coverage tables of the stores."""
    table = Table(title=f"candles in {cfg.data.market_path}")
    for column in ("exchange", "symbol", "timeframe", "first", "last", "rows", "gaps"):
        table.add_column(column, justify="right" if column in ("rows", "gaps") else "left")
    for c in await market.coverage():
        table.add_row(
            c.exchange,
            c.symbol,
            c.timeframe,
            _when(c.first_open_time),
            _when(c.last_open_time),
            str(c.rows),
            str(c.gaps),
        )
    console.print(table)
    per_asset: dict[str, list] = {}
    for m in await metrics.coverage():
        per_asset.setdefault(m.asset, []).append(m)
    table = Table(title=f"metrics in {cfg.data.metrics_path}")
    for column in ("asset", "metrics", "first day", "last day", "rows"):
        table.add_column(column)
    for asset, items in per_asset.items():
        table.add_row(
            asset,
            str(len(items)),
            ms_to_iso(min(m.first_observed_at for m in items))[:10],
            ms_to_iso(max(m.last_observed_at for m in items))[:10],
            str(sum(m.rows for m in items)),
        )
    console.print(table)
