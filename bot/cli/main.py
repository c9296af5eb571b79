"""Entry point of the ``cryptorlpm`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli import data, experiment, explain, features, live, models
from bot.cli.common import ConfigOption, console, load, rule, run, setup_logging

app = typer.Typer(
    help="CryptoRLPM: reinforcement-learning Crypto Modules for crypto portfolios.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(features.app, name="features")
app.add_typer(models.app, name="models")
app.add_typer(experiment.app, name="experiment")
app.add_typer(live.app, name="live")
app.command("train")(models.train)
app.command("explain")(explain.explain)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    setup_logging(verbose)


@app.command()
def demo(
    config: ConfigOption = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: runs/demo-<UTC time>)")
    ] = None,
) -> None:
    """The main job on the embedded default: synthetic market, feature selection, Crypto Module
    training, out-of-sample backtest against the baselines, report."""
    from datetime import UTC, datetime

    from backtest.demo import run_demo
    from backtest.report import format_metrics_table, metrics_table
    from strategies.features.inputs import MissingDataError

    cfg = load(config)
    out_dir = out or Path("runs") / f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    steps = iter(range(1, 6))

    def step(name: str) -> None:
        rule(f"[bold]{next(steps)}/5 {name}")

    def trained(coin: str, seed: int, folder: Path, seconds: float) -> None:
        console.print(f"  {coin} seed {seed}: trained in {seconds:.1f} s -> {folder}")

    outcome = run(lambda: run_demo(cfg, out_dir, step=step, on_trained=trained), MissingDataError)
    seeds = outcome.seeds
    runs = [seeds.runs[seeds.median_seed], *outcome.baselines]
    console.print(format_metrics_table(metrics_table(runs), highlight=False), soft_wrap=True)
    if len(seeds.runs) > 1:
        per_seed = ", ".join(f"s{s}: {m['arr']:+.1%}" for s, m in seeds.metrics.items())
        console.print(f"cryptorlpm ARR per seed: {per_seed} (median {seeds.median['arr']:+.1%})")
    console.print(
        f"done in {outcome.seconds:.0f} s. Report: [bold]{outcome.report.summary_html}[/] "
        f"(also summary.md, plots and CSVs in {outcome.report.out_dir})"
    )


if __name__ == "__main__":
    app()
