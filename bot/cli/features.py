"""``cryptorlpm features ...``: the Data Refinement Unit's per-coin metric selection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import ConfigOption, console, fail, load, open_stores, require_stores, run

app = typer.Typer(help="Per-coin metric selection and refinement (DRU).", no_args_is_help=True)


@app.command("select")
def select(
    coin: Annotated[str, typer.Option("--coin", help="coin ticker, e.g. BTC (or BTC/USDT)")],
    config: ConfigOption = None,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default: runs/features/<COIN>)")
    ] = None,
) -> None:
    """Select the coin's metrics on the training window; save and show the report + heatmap."""
    from bot.feed import dataset
    from strategies.features.inputs import MissingDataError, fit_coin_features, read_coin_inputs
    from strategies.features.report import (
        format_selection_report,
        selection_report,
        write_selection_report,
    )

    cfg = load(config)
    coin = coin.upper().split("/")[0]
    train = cfg.windows.train
    out_dir = out or Path("runs") / "features" / coin

    async def main() -> list[Path]:
        async with open_stores(cfg) as (market, metrics):
            if cfg.market.source == "synthetic" and not await market.coverage():
                with console.status("no data yet: generating the synthetic market"):
                    await dataset.build_synthetic(cfg, market, metrics)
                await dataset.resample_coins(cfg, market)
            inputs = await read_coin_inputs(cfg, market, metrics, coin)
        with console.status(f"selecting {coin}'s metrics on {train}"):
            spec = fit_coin_features(cfg, inputs, train.start_ms, train.end_ms)
        console.print(
            format_selection_report(selection_report(spec)), highlight=False, soft_wrap=True
        )
        return write_selection_report(spec, out_dir)

    if coin not in cfg.market.coins:
        fail(f"--coin {coin}: not one of the configured coins {list(cfg.market.coins)}")
    if cfg.market.source != "synthetic":  # only the synthetic market is generated on demand
        require_stores(cfg)
    paths = run(main, MissingDataError)
    for path in paths:
        console.print(f"wrote {path}")
