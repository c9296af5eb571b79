"""The main job on the embedded default: synthetic market -> DRU -> Crypto Modules -> backtest.

Every step goes through the same code a user's real run would: the stores, the feature
selection fitted on the training window, CM training with checkpoints chosen on validation, and
a replay of the test window (which nothing was fitted on) through the engine, with the CM vote
and every baseline under the same fees, slippage and exchange filters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backtest.pipeline import (
    SeedSummary,
    backtest_baselines,
    backtest_seeds,
    explain_vote_run,
    read_histories,
    replay_driver,
    summarise_seeds,
    train_modules,
)
from backtest.report import ReportPaths, write_report
from backtest.result import RunResult
from bot.feed import dataset
from bot.store import MarketStore, MetricStore
from config.schema import AppConfig
from strategies.features.report import write_selection_report

Step = Callable[[str], None]
"""Told the name of each step as it starts (progress display)."""


@dataclass(frozen=True)
class DemoOutcome:
    """Where everything went, and the figures to print."""

    out_dir: Path
    report: ReportPaths
    seeds: SeedSummary
    baselines: list[RunResult]
    seconds: float


async def run_demo(
    cfg: AppConfig,
    out_dir: Path,
    *,
    step: Step = lambda name: None,
    on_trained: Callable[[str, int, Path, float], None] | None = None,
) -> DemoOutcome:
    """Run the whole pipeline of ``cfg`` and write everything under ``out_dir``."""
    started = time.perf_counter()
    coins = cfg.market.coins
    seeds = cfg.training.seeds
    test = cfg.windows.test
    out_dir.mkdir(parents=True, exist_ok=True)
    market = await MarketStore.open(cfg.data.market_path)
    metrics = await MetricStore.open(cfg.data.metrics_path)
    try:
        if cfg.market.source == "synthetic":
            step(f"synthetic market: {len(coins)} coins, seed {cfg.synthetic.seed}")
            await dataset.build_synthetic(cfg, market, metrics)
            await dataset.resample_coins(cfg, market)
        step(f"feature selection on {cfg.windows.train}")
        histories = await read_histories(cfg, market, metrics, coins)
        for coin, history in histories.items():
            write_selection_report(history.feature_spec, out_dir / "features" / coin)
        step(f"training {len(coins)} Crypto Modules x {len(seeds)} seed(s)")
        folders = train_modules(cfg, histories, seeds, out_dir / "models", on_trained=on_trained)
        step(f"backtest on {test} (out of sample)")
        driver = await replay_driver(cfg, market, metrics, coins, test.start_ms, test.end_ms)
        runs = await backtest_seeds(cfg, folders, coins, seeds, driver)
        others = await backtest_baselines(cfg, coins, driver)
    finally:
        await metrics.close()
        await market.close()
    summary = summarise_seeds(runs)
    step("report")
    median = {coin: folders[coin, summary.median_seed] for coin in coins}
    strategy = explain_vote_run(cfg, median, driver, runs[summary.median_seed])
    notes = [
        f"Crypto Module vote over {', '.join(coins)}; {len(seeds)} seed(s) {list(seeds)}; the "
        f"curves show seed {summary.median_seed}, whose ARR is the median.",
        f"Feature selection and training used {cfg.windows.train}; checkpoints were chosen on "
        f"{cfg.windows.validation}; everything here is on {test}, which neither saw.",
        f"Fees {cfg.broker.fee_rate:.2%} per trade, slippage {cfg.broker.slippage_bps:g} bps, "
        "fills at the next bar's open.",
    ]
    report = write_report(
        out_dir / "report",
        strategy,
        others,
        title="CryptoRLPM demo (synthetic market)",
        notes=notes,
    )
    (out_dir / "report" / "seeds.json").write_text(
        json.dumps(
            {
                "median": summary.median,
                "median_seed": summary.median_seed,
                "seeds": {str(s): m for s, m in summary.metrics.items()},
            },
            indent=2,
            default=float,
        )
    )
    return DemoOutcome(out_dir, report, summary, others, time.perf_counter() - started)
