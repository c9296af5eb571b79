"""``cryptorlpm data ...``: fill and inspect the stores (synthetic, CSV import, download).

Each filling command writes one kind of data and refuses a config made for another
(``market.source``), so real and synthetic candles never end up in one series.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import (
    ConfigOption,
    console,
    load,
    open_stores,
    print_table,
    progress_bar,
    require_stores,
    run,
)
from bot.cli.common import fail as fail_markup
from bot.feed import dataset
from bot.feed.dataset import DatasetConfigError
from bot.store import MarketStore, MetricStore
from bot.timeframes import check_resample, ms_to_iso, to_ms
from config import AppConfig, ConfigError, apply_overrides, default_config_path

if TYPE_CHECKING:
    from bot.feed.csv_import import ImportReport

T = TypeVar("T")

app = typer.Typer(help="Fill and inspect market.db and metrics.db.", no_args_is_help=True)


@app.command("synth")
def synth(config: ConfigOption = None) -> None:
    """Generate the synthetic market (deterministic by seed) into the stores and resample it."""
    cfg = load(config)
    require_source(cfg, config, "synthetic")

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            with console.status("generating the synthetic market"):
                await dataset.build_synthetic(cfg, market, metrics)
            print_resampling(cfg, await dataset.resample_coins(cfg, market))
            await print_coverage(cfg, market, metrics)

    run_command(main, DatasetConfigError)


@app.command("export-synth")
def export_synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write (ohlcv/, onchain/)")],
    coin: Annotated[
        list[str] | None,
        typer.Option(help="coin (repeatable); default the walk-forward's BTC, STORJ, BLZ, LINK"),
    ] = None,
    start: Annotated[str, typer.Option(help="first day YYYY-MM-DD")] = "2020-01-01",
    end: Annotated[str, typer.Option(help="end day YYYY-MM-DD (exclusive)")] = "2022-03-01",
    seed: Annotated[int | None, typer.Option(help="default: [synthetic].seed")] = None,
    config: ConfigOption = None,
) -> None:
    """Write the synthetic market as a folder laid out like ../shared/data, with planted.json
    (which metrics lead each coin): `experiment walkforward --data-dir` on it is a positive
    control, a market whose predictable part is known."""
    from bot.feed.synthetic import generate_market
    from bot.feed.synthetic_csv import write_csv_dir

    cfg = load(config)
    coins = list(dict.fromkeys(c.upper() for c in coin or ("BTC", "STORJ", "BLZ", "LINK")))
    try:
        start_ms, end_ms = to_ms(start), to_ms(end)
    except ValueError as exc:
        fail(f"--start/--end: expected YYYY-MM-DD ({exc})")
    if end_ms <= start_ms:
        fail(f"--end {end} must be after --start {start}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"--out {out}: exists and is not an empty folder; give a new folder")
    synthetic = cfg.synthetic
    try:
        market = generate_market(
            coins,
            start_ms,
            end_ms,
            seed if seed is not None else synthetic.seed,
            leading_metrics=synthetic.leading_metrics,
            noise_metrics=synthetic.noise_metrics,
            market_metrics=synthetic.market_metrics,
            scenarios=synthetic.scenarios,
        )
    except ValueError as exc:
        fail(f"export-synth: {exc}")
    written = write_csv_dir(market, out, cfg.market.quote)
    console.print(f"wrote {len(written)} files under {escape(str(out))} (planted.json: the truth)")


@app.command("import")
def import_(
    dir: Annotated[Path, typer.Option("--dir", help="folder with ohlcv/ and onchain/")],
    config: ConfigOption = None,
) -> None:
    """Import ccxt-shaped candle CSVs and daily metric CSVs (a folder like ../shared/data)."""
    from bot.feed.csv_import import check_data_files
    from bot.feed.validation import DataValidationError

    cfg = load(config)
    if not dir.is_dir():
        fail(f"--dir {dir}: not a folder")
    try:
        check_data_files(dir, cfg.market.quote)  # before any store is created
    except FileNotFoundError as exc:
        fail(f"--dir {exc}")
    try:
        dataset.check_source(cfg, "csv")
    except DatasetConfigError as exc:
        # Validate the files first, writing nothing: a bad file is reported as a real import
        # would report it, and only then is the config refused.
        run_command(lambda: dataset.check_csv_dir(cfg, dir), DataValidationError, FileNotFoundError)
        fail(f"{config_file(config)}: {exc}. The files were checked; nothing was written")

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            with progress_bar() as bar:
                task = bar.add_task("importing files", total=None)
                report = await dataset.import_csv_dir(
                    cfg,
                    dir,
                    market,
                    metrics,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            print_import_report(report)
            print_resampling(cfg, await dataset.resample_coins(cfg, market))
            await print_coverage(cfg, market, metrics)

    run_command(main, DataValidationError, FileNotFoundError, DatasetConfigError)


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
        try:
            check_resample(cfg.market.base_timeframe, to)
        except ValueError as exc:
            fail(f"--to {to!r}: {exc} (market.base_timeframe is {cfg.market.base_timeframe!r})")
        try:  # validated like the file's market.timeframe
            cfg = apply_overrides(cfg, {"market.timeframe": to}, {"market.timeframe": "--to"})
        except ConfigError as exc:
            fail(str(exc))

    async def main() -> None:
        async with open_stores(cfg) as (market, _):
            summaries = await dataset.resample_coins(cfg, market)
        print_resampling(cfg, summaries)
        if not summaries:
            console.print("nothing to resample")

    run_command(main, DatasetConfigError)


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
    from bot.feed.exchange import ExchangeConfigError
    from bot.feed.validation import DataValidationError

    cfg = load(config)
    require_source(cfg, config, "exchange")
    since_ms = parse_time("--since", since) if since else cfg.market.start_ms
    until_ms = parse_time("--until", until) if until else None
    if until_ms is not None and until_ms <= since_ms:
        fail(f"--until {until}: must be after --since ({ms_to_iso(since_ms)})")

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

    run_command(main, DownloadError, DataValidationError, ExchangeConfigError, DatasetConfigError)


@app.command("show")
def show(config: ConfigOption = None) -> None:
    """Coverage per stored series: first, last, rows and gaps."""
    cfg = load(config)
    require_stores(cfg)

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            await print_coverage(cfg, market, metrics)

    run_command(main)


def fail(message: str) -> NoReturn:
    """Exit with ``message`` as a one-line error, printed as plain text (file names, open times
    in brackets and the like are not console markup)."""
    fail_markup(escape(message))
    raise typer.Exit(2)  # not reached: fail_markup exits


def run_command(coro_fn: Callable[[], Coroutine[Any, Any, T]], *errors: type[Exception]) -> T:
    """Run an async command; the listed exception types become one-line errors."""
    try:
        return run(coro_fn)
    except errors as exc:
        fail(str(exc))


def config_file(config: Path | None) -> str:
    """The config file a command runs with, for messages."""
    return f"config {config if config is not None else default_config_path()}"


def require_source(cfg: AppConfig, config: Path | None, source: dataset.Source) -> None:
    """Exit with one line naming the config file unless ``cfg`` is made for ``source``."""
    try:
        dataset.check_source(cfg, source)
    except DatasetConfigError as exc:
        fail(f"{config_file(config)}: {exc}")


def parse_time(option: str, text: str) -> int:
    """Epoch ms of a ``--since``/``--until`` value, or exit naming the option."""
    try:
        return to_ms(text)
    except ValueError:
        fail(f"{option} {text!r}: expected a date YYYY-MM-DD or a date-time YYYY-MM-DDTHH:MM")


def print_import_report(report: ImportReport) -> None:
    """One line per file (rows written, or why it was rejected), then the skipped files."""
    table = Table(title=f"imported {len(report.files)} files in {report.seconds:.1f} s")
    for column in ("file", "kind", "series", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for item in report.files:
        rows = str(item.rows) if item.error is None else f"rejected: {item.error}"
        table.add_row(item.path.name, item.kind, item.series, rows)
    print_table(table)
    console.print(f"{report.rows} rows written", highlight=False)
    for path in report.skipped:
        console.print(f"skipped {path} (name not understood)", highlight=False)
    if report.missing_coins:
        console.print(f"no candle file for {', '.join(report.missing_coins)}", highlight=False)


def print_resampling(cfg: AppConfig, summaries: list[dataset.ResampleSummary]) -> None:
    """One line per resampled coin: bars written, bins with missing source candles (kept) and
    the last bin when it was still forming (not written)."""
    for s in summaries:
        notes = []
        if s.incomplete:
            notes.append(f"{s.incomplete} with missing {cfg.market.base_timeframe} candles (kept)")
        if s.forming_since is not None:
            notes.append(f"the bin from {_when(s.forming_since)} is still forming (not stored)")
        console.print(
            f"resampled {s.symbol}: {s.bars} {cfg.market.timeframe} bars"
            + "".join(f", {note}" for note in notes),
            highlight=False,
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
    print_table(table)
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
    print_table(table)
