"""The paper experiment (Huang & Tanaka 2023, Table 2): portfolios a, b, c on Binance 6h bars.

Portfolios: a = BTC + STORJ, b = a + BLZ, c = b + LINK. The data is imported from a folder laid
out like ``../shared/data``; feature selection and the Crypto Modules are fitted once per coin
(and per seed for the agents) and reused across the portfolios, as in the paper; every portfolio
is then backtested on the test window with the CM vote and the baselines through the same engine.
``results.json`` holds, per portfolio, the median over seeds and each seed's figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backtest.metrics import compute_metrics
from backtest.pipeline import (
    backtest_baselines,
    backtest_policy_seeds,
    explain_vote_run,
    read_histories,
    replay_driver,
    summarise_seeds,
    train_mars_modules,
    train_modules,
)
from backtest.regime_report import plot_controller
from backtest.report import format_metrics_table, write_report
from bot.feed import dataset
from bot.store import MarketStore, MetricStore
from bot.timeframes import ms_to_iso, timeframe_ms
from config.schema import AppConfig, DataConfig, TrainingConfig, WindowsConfig
from strategies.registry import runtime

PORTFOLIOS: dict[str, tuple[str, ...]] = {
    "a": ("BTC", "STORJ"),
    "b": ("BTC", "STORJ", "BLZ"),
    "c": ("BTC", "STORJ", "BLZ", "LINK"),
}
TABLE_METRICS = ("arr", "drr", "sortino", "sharpe", "mdd")


class DataRangeError(ValueError):
    """The windows ask for dates the data does not cover."""


@dataclass(frozen=True)
class ExperimentOutcome:
    """The written files and what the run had to say about its data."""

    results_json: Path
    table_md: Path
    notes: list[str]


def experiment_config(
    cfg: AppConfig, out_dir: Path, windows: WindowsConfig, seeds: Sequence[int]
) -> AppConfig:
    """``cfg`` with its stores and registry under ``out_dir`` and the experiment's windows."""
    return cfg.model_copy(
        update={
            "data": DataConfig(dir=out_dir / "data"),
            "windows": windows,
            "training": TrainingConfig(seeds=tuple(seeds), models_dir=out_dir / "models"),
            "market": cfg.market.model_copy(
                update={"coins": tuple(dict.fromkeys(c for p in PORTFOLIOS.values() for c in p))}
            ),
        }
    )


async def coverage_notes(cfg: AppConfig, market: MarketStore) -> list[str]:
    """Check the windows against the stored bars; raise when the test window has no data."""
    notes = []
    coverage = {
        c.symbol: c
        for c in await market.coverage(cfg.market.exchange)
        if c.timeframe == cfg.market.timeframe
    }
    missing = [c for c in cfg.market.coins if cfg.market.symbol(c) not in coverage]
    if missing:
        raise DataRangeError(f"no {cfg.market.timeframe} bars for {missing} in the data folder")
    last = min(c.last_open_time for c in coverage.values())
    first = max(c.first_open_time for c in coverage.values())
    test, train = cfg.windows.test, cfg.windows.train
    if test.start_ms > last:
        raise DataRangeError(
            f"the test window {test} lies beyond the data, which ends at {ms_to_iso(last)}: there "
            "is nothing to test on. Move the windows inside the data, e.g. --train "
            "2020-10-01:2021-09-30 --val 2021-10-01:2021-11-30 --test 2021-12-01:2022-02-28"
        )
    last_close = last + timeframe_ms(cfg.market.timeframe)
    if test.end_ms > last_close:
        notes.append(
            f"The test window {test} extends beyond the data (last bar closes "
            f"{ms_to_iso(last_close)}); results cover only the part with data."
        )
    if train.start_ms < first:
        notes.append(
            f"Not every coin has data from the start of training {train.start}: the latest "
            f"first bar opens {ms_to_iso(first)}."
        )
    return notes


async def run_paper_experiment(
    cfg: AppConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    step: Callable[[str], None] = lambda name: None,
    on_trained: Callable[[str, int, Path, float], None] | None = None,
    policy: str = "cryptorlpm",
) -> ExperimentOutcome:
    """Import ``data_dir``, train once per coin and seed, backtest portfolios a, b, c with
    ``policy``: ``cryptorlpm`` (the paper's vote), ``mars`` or ``mars+manager``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    coins, seeds, test = cfg.market.coins, cfg.training.seeds, cfg.windows.test
    results: dict[str, dict] = {}
    tables = []
    async with (
        await MarketStore.open(cfg.data.market_path) as market,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        step(f"importing {data_dir}")
        await dataset.import_csv_dir(cfg, data_dir, market, metrics)
        await dataset.resample_coins(cfg, market)
        notes = await coverage_notes(cfg, market)
        step(f"feature selection on {cfg.windows.train} for {', '.join(coins)}")
        histories = await read_histories(cfg, market, metrics, coins)
        if policy == "cryptorlpm":
            step(f"training {len(coins)} Crypto Modules x {len(seeds)} seeds")
            folders = train_modules(
                cfg, histories, seeds, cfg.training.models_dir, on_trained=on_trained
            )
        else:
            step(f"training {len(coins)} MARS ensembles x {len(seeds)} seeds")
            folders = train_mars_modules(
                cfg, histories, seeds, cfg.training.models_dir, on_trained=on_trained
            )
        for name, members in PORTFOLIOS.items():
            step(f"portfolio {name} ({', '.join(members)}) on {test}")
            driver = await replay_driver(cfg, market, metrics, members, test.start_ms, test.end_ms)
            runs, regime = await backtest_policy_seeds(cfg, policy, folders, members, seeds, driver)
            summary = summarise_seeds(runs)
            others = await backtest_baselines(cfg, members, driver)
            entry: dict[str, dict] = {
                policy: {
                    **{k: summary.median[k] for k in TABLE_METRICS},
                    "seeds": [
                        {"seed": s, **{k: m[k] for k in TABLE_METRICS}}
                        for s, m in summary.metrics.items()
                    ],
                }
            }
            for run in others:
                entry[run.name] = {k: compute_metrics(run)[k] for k in TABLE_METRICS}
            results[name] = entry
            median = {c: folders[c, summary.median_seed] for c in members}
            shown = runs[summary.median_seed]
            if policy == "cryptorlpm":  # explanations attribute the vote's Crypto Modules
                shown = explain_vote_run(cfg, median, driver, shown)
            write_report(
                out_dir / f"portfolio_{name}",
                shown,
                others,
                title=f"Portfolio {name}: {', '.join(members)} ({test})",
                notes=[
                    f"{policy}: seed {summary.median_seed} of {list(seeds)} (median ARR).",
                    *notes,
                ],
            )
            if regime.get(summary.median_seed):
                plot_controller(
                    runs[summary.median_seed],
                    regime[summary.median_seed],
                    out_dir / f"portfolio_{name}" / "controller.png",
                    title=f"Portfolio {name}: {policy} (seed {summary.median_seed}): equity, "
                    "controller weights and exposure",
                )
            tables.append((name, members, entry))
    windows = {k: str(getattr(cfg.windows, k)) for k in ("train", "validation", "test")}
    results_json = out_dir / "results.json"
    results_json.write_text(
        json.dumps(
            json_ready(
                {
                    "portfolios": results,
                    "windows": windows,
                    "seeds": list(seeds),
                    "notes": notes,
                    "runtime": runtime(),
                }
            ),
            indent=2,
            allow_nan=False,
        )
    )
    table_md = out_dir / "table.md"
    table_md.write_text(table2_markdown(tables, windows, seeds, notes, policy=policy))
    return ExperimentOutcome(results_json, table_md, notes)


def table2_markdown(
    tables: list[tuple[str, tuple[str, ...], dict[str, dict]]],
    windows: dict[str, str],
    seeds: Sequence[int],
    notes: Sequence[str],
    *,
    policy: str = "cryptorlpm",
) -> str:
    """The Table-2-style comparison: one block per portfolio, one row per method."""
    import pandas as pd

    lines = [
        "# CryptoRLPM paper experiment",
        "",
        f"Train {windows['train']}, validation {windows['validation']}, test {windows['test']}; "
        f"{policy} = median over seeds {list(seeds)}. ARR accumulated return, DRR mean daily "
        "return, SR Sortino ratio (the paper's), Sharpe, MDD maximum drawdown.",
        "",
        *(f"> {note}" for note in notes),
    ]
    for name, members, entry in tables:
        frame = pd.DataFrame.from_dict(
            {method: {k: v for k, v in m.items() if k != "seeds"} for method, m in entry.items()},
            orient="index",
        )
        frame.index.name = "run"
        lines += ["", f"## Portfolio {name}: {', '.join(members)}", ""]
        lines.append(format_metrics_table(frame, columns=list(TABLE_METRICS)))
    return "\n".join(lines) + "\n"


def json_ready(value: object) -> object:
    """JSON-ready copy: numbers as floats (ints kept), NaN and infinities as ``None``."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int):
        return value
    number = float(value)  # type: ignore[arg-type]
    return number if number == number and abs(number) != float("inf") else None
