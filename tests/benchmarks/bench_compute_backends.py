"""Trainings fanned out: sequential vs a local process pool vs a local Ray instance.

Trains the same jobs (one synthetic coin, the default Crypto Module hyperparameters with a small
budget, several seeds) on each backend, checks the networks are bit-identical, and prints the wall
time of each and its ratio to the sequential run (same process, same machine). On 2 cores the
pool and Ray should approach 2x; Ray pays its start-up (a few seconds) once per run.

Run: ``.venv/bin/python tests/benchmarks/bench_compute_backends.py [--jobs N] [--workers W]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backtest.compute import fan_out
from backtest.pipeline import TrainJob, run_train_job
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.timeframes import to_ms
from config.schema import ComputeConfig, CryptoModuleParams, DQNParams, FeatureConfig
from strategies.agents.train import Windows, refine_history
from tests.unit.agents.conftest import TINY_WINDOWS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    market = generate_market(["ETH"], to_ms("2020-07-01"), to_ms("2021-11-01"), seed=11)
    bars = resample_candles(market.candles["ETH"], "1h", "6h").frame
    windows = Windows.from_config(TINY_WINDOWS)
    history = refine_history(
        "ETH", bars, market.metrics, "6h", FeatureConfig(), windows.train,
        market_wide_assets=["MARKET"],
    )  # fmt: skip
    params = CryptoModuleParams(
        eam=DQNParams(total_env_steps=4_000, gamma=0.0, learning_starts=1_000),
        sam=DQNParams(total_env_steps=8_000),
    )
    jobs = [TrainJob(history, windows, params, seed, 0.0015) for seed in range(1, args.jobs + 1)]
    times, results = {}, {}
    for backend in ("sequential", "process", "ray"):
        started = time.perf_counter()
        results[backend] = fan_out(
            run_train_job, jobs, ComputeConfig(backend=backend, workers=args.workers)
        )
        times[backend] = time.perf_counter() - started
    for backend in ("process", "ray"):
        same = all(
            torch.equal(a.sam.state_dict[k], b.sam.state_dict[k])
            for a, b in zip(results["sequential"], results[backend], strict=True)
            for k in a.sam.state_dict
        )
        assert same, f"{backend} differs from the sequential run"
    print(f"{args.jobs} trainings, {args.workers} workers; networks identical on every backend")
    for backend, seconds in times.items():
        print(f"{backend:<11}{seconds:8.1f} s   speed-up x{times['sequential'] / seconds:.2f}")


if __name__ == "__main__":
    main()
