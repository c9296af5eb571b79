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


PAPER_POLICIES = ("cryptorlpm", "mars", "mars+manager")


@app.command("paper")
def paper(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="folder with ohlcv/ and onchain/")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    seeds: Annotated[int, typer.Option(help="number of seeds (1..N)", min=1)] = 5,
    policy: Annotated[
        str, typer.Option(help="what decides: cryptorlpm (the paper's vote), mars, mars+manager")
    ] = "cryptorlpm",
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

    if policy not in PAPER_POLICIES:
        fail(f"--policy {policy!r}: expected one of {', '.join(PAPER_POLICIES)}")
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
        lambda: run_paper_experiment(
            cfg, data_dir, out, step=step, on_trained=trained, policy=policy
        ),
        DataRangeError,
        MissingDataError,
        FileNotFoundError,
    )
    console.print(outcome.table_md.read_text(), soft_wrap=True, highlight=False)
    console.print(f"wrote {outcome.results_json}, {outcome.table_md} and portfolio_*/ reports")


@app.command("walkforward")
def walkforward(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="folder with ohlcv/ and onchain/")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    policy: Annotated[
        str,
        typer.Option(help="policy name: cryptorlpm, mars, mars+manager, equal_weight, ..."),
    ] = "cryptorlpm",
    retrain_every: Annotated[int, typer.Option(help="days between refits", min=1)] = 90,
    train_days: Annotated[int, typer.Option(help="training days before validation", min=7)] = 120,
    val_days: Annotated[int, typer.Option(help="validation days before each refit", min=1)] = 30,
    seeds: Annotated[int, typer.Option(help="number of seeds (1..K)", min=1)] = 5,
    first_seed: Annotated[
        int,
        typer.Option(
            "--first-seed",
            help="the first of the --seeds seeds (S..S+K-1): fresh seeds to replicate a result",
            min=1,
        ),
    ] = 1,
    portfolio: Annotated[
        list[str] | None, typer.Option(help="a, b or c (repeatable); default all three")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="first refit YYYY-MM-DD (default: earliest that fits)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="end of the span YYYY-MM-DD")] = None,
    prior_trials: Annotated[
        int, typer.Option(help="trials run before this one, counted in the DSR", min=0)
    ] = 0,
    bag: Annotated[
        int,
        typer.Option(
            help="seeds per seed bag (cryptorlpm): each run is a bag of this many consecutive "
            "seeds, its coins' weights their modules' mean position; 1: one seed per run",
            min=1,
        ),
    ] = 1,
    backend: Annotated[
        str | None, typer.Option(help="override [compute].backend: sequential, process, ray")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="where trained modules go (default OUT/models); trainings with the same "
            "inputs, parameters and seeds found there are reused (e.g. mars, then "
            "mars+manager)",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="default: the bundled walkforward.toml")
    ] = None,
) -> None:
    """Walk-forward with retraining: folds refit like the Agent Updating Unit, statistics."""
    import time

    from backtest.compute import ComputeError
    from backtest.experiment import PORTFOLIOS, DataRangeError
    from backtest.policies import policy_builder
    from backtest.walkforward import WalkForwardSpec, run_walkforward, walkforward_config
    from backtest.wf_report import write_walkforward
    from bot.timeframes import to_ms
    from strategies.features.inputs import MissingDataError

    base = load(config or bundled_config_path("walkforward.toml"))
    if not data_dir.is_dir():
        fail(f"--data-dir {data_dir}: not a folder")
    names = tuple(dict.fromkeys(portfolio or ("a", "b", "c")))
    unknown = [p for p in names if p not in PORTFOLIOS]
    if unknown:
        fail(f"--portfolio {unknown[0]!r}: expected one of {list(PORTFOLIOS)}")
    try:
        builder = policy_builder(policy)
    except ValueError as exc:
        fail(f"--policy: {exc}")
    if bag > 1 and not builder.bags:
        fail(f"--bag {bag}: policy {policy!r} does not take seed bags (cryptorlpm does)")
    if seeds % bag:
        fail(f"--bag {bag}: must divide --seeds {seeds} (bags of consecutive seeds)")
    if backend is not None and backend not in ("sequential", "process", "ray"):
        fail(f"--backend {backend!r}: expected sequential, process or ray")
    bounds = {}
    for option, text in (("--start", start), ("--end", end)):
        try:
            bounds[option] = None if text is None else to_ms(date.fromisoformat(text).isoformat())
        except ValueError as exc:
            fail(f"{option} {text!r}: expected YYYY-MM-DD ({exc})")
    spec = WalkForwardSpec(
        policy=policy,
        retrain_every_days=retrain_every,
        train_days=train_days,
        val_days=val_days,
        seeds=tuple(range(first_seed, first_seed + seeds)),
        portfolios=names,
        start_ms=bounds["--start"],
        end_ms=bounds["--end"],
        prior_trials=prior_trials,
        bag=bag,
    )
    cfg = walkforward_config(base, out, spec)
    if models_dir is not None:
        cfg = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"models_dir": models_dir})}
        )
    if backend is not None:
        cfg = cfg.model_copy(
            update={"compute": cfg.compute.model_copy(update={"backend": backend})}
        )
    console.print(
        f"compute: {cfg.compute.backend}"
        + (f" ({cfg.compute.workers} workers)" if cfg.compute.workers else "")
        + f"; SAM {cfg.agents.sam.total_env_steps} / EAM {cfg.agents.eam.total_env_steps} env "
        "steps per module"
    )
    steps = iter(range(1, 100))

    def step(name: str) -> None:
        rule(f"[bold]{next(steps)} {name}")

    def trained(fold, coin: str, seed: int, seconds: float) -> None:
        console.print(f"  fold {fold.index} ({fold.label}) {coin} seed {seed}: {seconds:.1f} s")

    def backtested(portfolio: str, name: str, seed: int | None) -> None:
        unit = "bag" if bag > 1 and name == policy else "seed"
        console.print(f"  portfolio {portfolio}: {name}" + (f" {unit} {seed}" if seed else ""))

    started = time.perf_counter()
    runs = run(
        lambda: run_walkforward(
            cfg, data_dir, spec, step=step, on_trained=trained, on_backtest=backtested
        ),
        DataRangeError,
        MissingDataError,
        ComputeError,
    )
    wall = time.perf_counter() - started
    step("statistics and reports")
    write_walkforward(runs, out, wall_s=wall)
    console.print((out / "table.md").read_text(), soft_wrap=True, highlight=False)
    console.print(
        f"{runs.trainings} trainings ({runs.reused} reused from {cfg.training.models_dir}) in "
        f"{runs.training_seconds:.0f} s, {wall:.0f} s in all; "
        f"wrote {out / 'results.json'}, {out / 'table.md'} and portfolio_*/ reports"
    )


@app.command("compare")
def compare(
    first: Annotated[Path, typer.Argument(help="a finished walk-forward's --out folder (A)")],
    second: Annotated[Path, typer.Argument(help="another one over the same folds and seeds (B)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="also write comparison.md and comparison.json in this folder"),
    ] = None,
) -> None:
    """Pair two walk-forwards seed by seed (a policy and its ablation, say): each one's median
    seed and median fold, and the per-seed differences A - B with how many seeds favour A. A
    run of seed bags pairs bag by bag, or with its seeds run alone (each bag against the median
    of its seeds)."""
    import json

    from backtest.experiment import json_ready
    from backtest.wf_compare import (
        ComparisonError,
        compare_walkforwards,
        comparison_markdown,
        read_walkforward,
    )

    try:
        runs = read_walkforward(first), read_walkforward(second)
        document = compare_walkforwards(*runs, labels=(first.name, second.name))
    except ComparisonError as exc:
        fail(str(exc))
        raise  # unreachable
    text = comparison_markdown(document)
    console.print(text, soft_wrap=True, highlight=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(text)
        (out / "comparison.json").write_text(
            json.dumps(json_ready(document), indent=1, allow_nan=False) + "\n"
        )
        console.print(f"wrote {out / 'comparison.md'} and {out / 'comparison.json'}")


@app.command("probe")
def probe(
    run_dir: Annotated[Path, typer.Argument(help="a finished walk-forward's --out folder")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="the walk-forward's config (default: the bundled walkforward.toml)",
        ),
    ] = None,
    planted: Annotated[
        Path | None,
        typer.Option(
            help="planted.json of a synthetic market (`data export-synth`): also probe the "
            "metrics it planted to lead each coin"
        ),
    ] = None,
) -> None:
    """Do the modules' inputs hold information? A linear probe over a finished walk-forward's
    folds: per fold and coin, ridge regression on the DRU's components and recent returns,
    fitted on the fold's training and validation days, holds the coin while it predicts a rise
    (over the next bar, and over the next 28 bars); its timing is tested like the policy's.
    The same runs on the DRU's rolling z-scores before its PCA, on its selected metrics before
    both, and on all of the coin's own metrics, to place where information is lost. Writes
    probe.md and probe.json in RUN_DIR."""
    from backtest.experiment import DataRangeError
    from backtest.probe import PlantedMismatch, run_probe, write_probe
    from backtest.wf_compare import ComparisonError, read_walkforward
    from bot.feed.synthetic_csv import read_planted
    from strategies.features.inputs import MissingDataError

    cfg = load(config or bundled_config_path("walkforward.toml"))
    truth = None
    if planted is not None:
        try:
            truth = read_planted(planted)
        except ValueError as exc:
            fail(f"--planted {exc}")
    try:
        runs = read_walkforward(run_dir)
    except ComparisonError as exc:
        fail(str(exc))
        raise  # unreachable
    if not getattr(runs, "closes", None):
        fail(f"{run_dir}: its runs.pkl predates the kept closes; run the walk-forward again")
    if not (run_dir / "data").is_dir():
        fail(f"{run_dir}: no data/ folder (the stores the walk-forward imported)")
    ran_on = {r.timeframe for p in runs.portfolios for r in [*p.policy.values(), *p.baselines]}
    if ran_on and ran_on != {cfg.market.timeframe}:
        fail(
            f"--config: [market].timeframe {cfg.market.timeframe!r}, but {run_dir} ran on "
            f"{', '.join(sorted(ran_on))}: pass the config the walk-forward ran with"
        )
    rule("[bold]probe: DRU fitted per fold and coin, ridge per horizon")
    document = run(
        lambda: run_probe(
            cfg, runs, run_dir, step=lambda text: console.print(f"  {text}"), planted=truth
        ),
        DataRangeError,
        MissingDataError,
        PlantedMismatch,
    )
    data, text = write_probe(document, run_dir)
    console.print(text.read_text(), soft_wrap=True, highlight=False)
    console.print(f"wrote {data} and {text}")
