"""Trainings fanned out over a process pool and over a local Ray instance give networks
bit-identical to the sequential run (seeded torch, one thread per worker)."""

from __future__ import annotations

import pytest
import torch

from backtest.compute import fan_out
from backtest.pipeline import TrainJob, run_train_job
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.timeframes import to_ms
from config.schema import ComputeConfig, FeatureConfig
from strategies.agents.train import Windows, refine_history
from tests.unit.agents.conftest import COST, TINY, TINY_WINDOWS


@pytest.fixture(scope="module")
def jobs() -> list[TrainJob]:
    market = generate_market(
        ["ETH"], to_ms("2020-07-01"), to_ms("2021-11-01"), seed=11, scenarios=()
    )
    bars = resample_candles(market.candles["ETH"], "1h", "6h").frame
    windows = Windows.from_config(TINY_WINDOWS)
    history = refine_history(
        "ETH", bars, market.metrics, "6h", FeatureConfig(), windows.train,
        market_wide_assets=["MARKET"],
    )  # fmt: skip
    return [TrainJob(history, windows, TINY, seed, COST) for seed in (1, 2)]


def _weights(results) -> list[dict[str, torch.Tensor]]:
    return [
        {**r.sam.state_dict, **{f"eam.{k}": v for k, v in r.eam.state_dict.items()}}
        for r in results
    ]


def _assert_identical(a, b) -> None:
    for one, other in zip(_weights(a), _weights(b), strict=True):
        assert one.keys() == other.keys()
        assert all(torch.equal(one[k], other[k]) for k in one)
    assert [r.scores for r in a] == [r.scores for r in b]


@pytest.fixture(scope="module")
def sequential(jobs):
    return fan_out(run_train_job, jobs, ComputeConfig(backend="sequential"))


def test_a_process_pool_trains_the_same_networks_as_a_sequential_run(jobs, sequential) -> None:
    arrived: list[int] = []
    pooled = fan_out(
        run_train_job,
        jobs,
        ComputeConfig(backend="process", workers=2),
        on_result=lambda i, r: arrived.append(i),
    )
    assert sorted(arrived) == [0, 1]
    assert [r.seed for r in pooled] == [1, 2]  # job order, whatever the completion order
    _assert_identical(sequential, pooled)
    assert not all(  # seeds do differ: the test would catch a mix-up
        torch.equal(sequential[0].sam.state_dict[k], sequential[1].sam.state_dict[k])
        for k in sequential[0].sam.state_dict
    )


def test_ray_tasks_train_the_same_networks_as_a_sequential_run(jobs, sequential) -> None:
    import ray  # a dev dependency (pyproject [dev])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = fan_out(run_train_job, jobs, ComputeConfig(backend="ray"))
        pids = ray.get([ray.remote(lambda: __import__("os").getpid()).remote() for _ in range(2)])
    finally:
        ray.shutdown()
    _assert_identical(sequential, remote)
    assert all(pid != __import__("os").getpid() for pid in pids)  # real Ray worker processes
