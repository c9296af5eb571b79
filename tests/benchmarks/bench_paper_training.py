"""Training the paper's portfolio (c) on real data: BTC, STORJ, BLZ, LINK, one seed.

Reads ``../shared/data`` (Binance 1h candles resampled to UTC-aligned 6h bars, daily on-chain
series known the day after plus a 1h lag), fits each coin's DRU on the training window, then
trains each Crypto Module (EAM + SAM, the default hyperparameters) on 2020-10-01 .. 2021-12-31 and
keeps the checkpoint with the best score on 2022-01-01 .. 2022-02-28. Prints the time per coin and
in total, and the validation scores next to buy & hold. Target: the four modules in <= 2 minutes
on 2 cores.

The data folder is not part of the project (its licence forbids redistribution); when it is
absent this benchmark says so and exits.

Run: ``.venv/bin/python tests/benchmarks/bench_paper_training.py [--data DIR] [--seed N]
[--models DIR]`` (``--models`` also saves the four artifacts into a registry folder).
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import pandas as pd

from bot.feed.csv_import import read_candle_csv, read_metric_csv
from bot.feed.resample import resample_candles
from config.schema import AppConfig, DateWindow, FeatureConfig, WindowsConfig
from strategies.agents.params import CryptoModuleParams
from strategies.agents.train import Windows, refine_history, train_cm

COINS = ("BTC", "STORJ", "BLZ", "LINK")
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# config/paper.toml's windows; its test window lies beyond the data, so no test score here.
PAPER_WINDOWS = WindowsConfig(
    train=DateWindow(start=date(2020, 10, 1), end=date(2021, 12, 31)),
    validation=DateWindow(start=date(2022, 1, 1), end=date(2022, 2, 28)),
    test=DateWindow(start=date(2022, 3, 1), end=date(2022, 9, 30)),
)


def load(data: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """6h bars of each coin and every daily metric as one long frame."""
    bars = {}
    for coin in COINS:
        hourly = read_candle_csv(data / "ohlcv" / f"{coin}_USDT-1h.csv", "1h")
        bars[coin] = resample_candles(hourly, "1h", "6h").frame
    metrics = []
    for path in sorted((data / "onchain").glob("*.csv")):
        metrics.append(read_metric_csv(path, path.stem.split("_")[0]))
    return bars, pd.concat(metrics, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models", type=Path, default=None, help="save artifacts here")
    args = parser.parse_args()
    if not (args.data / "ohlcv").is_dir():
        print(
            f"real data not found at {args.data}: this benchmark needs ../shared/data "
            "(see its README); nothing was run"
        )
        return

    cfg = AppConfig(windows=PAPER_WINDOWS)
    params = CryptoModuleParams()
    windows = Windows.from_config(PAPER_WINDOWS)
    started = time.perf_counter()
    bars, metrics = load(args.data)
    loaded = time.perf_counter() - started
    print(
        f"loaded {len(metrics)} metric rows and {sum(map(len, bars.values()))} 6h bars "
        f"in {loaded:.1f} s"
    )
    print(
        f"{'coin':<7}{'k':>3}{'DRU s':>7}{'train s':>9}{'val SAM':>9}{'val EAM':>9}"
        f"{'val B&H':>9}  selected metrics"
    )
    for coin in COINS:
        t0 = time.perf_counter()
        history = refine_history(
            coin,
            bars[coin],
            metrics,
            "6h",
            FeatureConfig(),
            windows.train,
            market_wide_assets=[a for a in cfg.metrics.market_wide_assets if a != coin],
            publication_lag_ms=cfg.metrics.publication_lag_ms,
        )
        t1 = time.perf_counter()
        trained = train_cm(history, windows, params, args.seed, cost=0.0015)
        t2 = time.perf_counter()
        scores = trained.scores["validation"]
        ids = history.feature_spec.metric_ids
        selected = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        print(
            f"{coin:<7}{len(history.feature_names):>3}{t1 - t0:7.1f}{t2 - t1:9.1f}"
            f"{scores['sam']:+9.3f}{scores.get('eam', float('nan')):+9.3f}"
            f"{scores['buy_and_hold']:+9.3f}  {selected}",
            flush=True,
        )
        if args.models is not None:
            from strategies.registry import save_crypto_module

            save_crypto_module(
                args.models,
                trained,
                config=cfg,
                training=PAPER_WINDOWS,
                exchange="binance",
                symbol=f"{coin}/USDT",
            )
    total = time.perf_counter() - started
    print(
        f"\n4 Crypto Modules (EAM + SAM), seed {args.seed}: {total:.1f} s in total "
        f"(target <= 120 s); validation scores are net log returns (SAM), summed "
        f"signed returns (EAM)"
    )


if __name__ == "__main__":
    main()
