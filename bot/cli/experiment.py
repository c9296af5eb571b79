"""``cryptorlpm experiment paper``: the paper's Table 2 on a folder laid out like ../shared/data."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail, load, rule, run
from config import bundled_config_path
from config.schema import DateWindow, WindowsConfig

app = typer.Typer(help="Reproducible experiments.", no_args_is_help=True)

WindowOption = typer.Option(help="START:END dates, both inclusive, e.g. 2020-10-01:2021-09-30")


def _window(text: str | None, default: DateWindow, option: str) -> DateWindow:
    if text is None:
        return default
    try:
        start, end = (date.fromisoformat(part) for part in text.split(":"))
        return DateWindow(start=start, end=end)
    except ValueError as exc:
        fail(f"{option} {text!r}: expected START:END as YYYY-MM-DD:YYYY-MM-DD ({exc})")
        raise


@app.command("paper")
def paper(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="folder with ohlcv/ and onchain/")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    seeds: Annotated[int, typer.Option(help="number of seeds (1..N)", min=1)] = 5,
    train: Annotated[str | None, WindowOption] = None,
    val: Annotated[str | None, WindowOption] = None,
    test: Annotated[str | None, WindowOption] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="default: the bundled paper.toml")
    ] = None,
) -> None:
    """Portfolios a (BTC, STORJ), b (+BLZ), c (+LINK) on 6h bars: CM vote vs baselines."""
    from pydantic import ValidationError

    from backtest.experiment import DataRangeError, experiment_config, run_paper_experiment
    from strategies.features.inputs import MissingDataError

    base = load(config or bundled_config_path("paper.toml"))
    if not data_dir.is_dir():
        fail(f"--data-dir {data_dir}: not a folder")
    try:
        windows = WindowsConfig(
            train=_window(train, base.windows.train, "--train"),
            validation=_window(val, base.windows.validation, "--val"),
            test=_window(test, base.windows.test, "--test"),
        )
    except ValidationError as exc:
        fail(f"windows: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
        return
    cfg = experiment_config(base, out, windows, range(1, seeds + 1))
    steps = iter(range(1, 7))

    def step(name: str) -> None:
        rule(f"[bold]{next(steps)}/6 {name}")

    def trained(coin: str, seed: int, folder: Path, seconds: float) -> None:
        console.print(f"  {coin} seed {seed}: {seconds:.1f} s")

    outcome = run(
        lambda: run_paper_experiment(cfg, data_dir, out, step=step, on_trained=trained),
        DataRangeError,
        MissingDataError,
        FileNotFoundError,
    )
    console.print(outcome.table_md.read_text(), soft_wrap=True, highlight=False)
    console.print(f"wrote {outcome.results_json}, {outcome.table_md} and portfolio_*/ reports")
