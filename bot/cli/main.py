"""Entry point of the ``cryptorlpm`` command."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from bot.cli import data, features, models
from bot.cli.common import ConfigOption, console, load, open_stores, run, setup_logging

app = typer.Typer(
    help="CryptoRLPM: reinforcement-learning Crypto Modules for crypto portfolios.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(features.app, name="features")
app.add_typer(models.app, name="models")
app.command("train")(models.train)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    setup_logging(verbose)


@app.command()
def demo(config: ConfigOption = None) -> None:
    """The main job on the embedded default: build the synthetic market and report its coverage."""
    from bot.feed import dataset

    cfg = load(config)
    started = time.perf_counter()

    async def main() -> None:
        async with open_stores(cfg) as (market, metrics):
            console.rule("[bold]1/2 synthetic market")
            with console.status(
                f"generating {len(cfg.market.coins)} coins, seed {cfg.synthetic.seed}"
            ):
                await dataset.build_synthetic(cfg, market, metrics)
            console.rule(
                f"[bold]2/2 resampling {cfg.market.base_timeframe} -> {cfg.market.timeframe}"
            )
            await dataset.resample_coins(cfg, market)
            await data.print_coverage(cfg, market, metrics)

    run(main)
    console.print(
        f"done in {time.perf_counter() - started:.1f} s; stores in [bold]{cfg.data.dir}[/]"
    )


if __name__ == "__main__":
    app()
