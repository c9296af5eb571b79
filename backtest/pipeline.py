"""From stored data to compared portfolios: the steps the demo and the paper experiment share.

1. :func:`read_histories` - each coin's bars and DRU features, the DRU fitted on the training
   window only (once per coin: seeds change the agents, not the feature selection);
2. :func:`train_modules` - one Crypto Module per coin and seed, fanned out over ``[compute]``
   (a process pool by default, or Ray) and saved to the registry;
3. :func:`backtest_vote` - a portfolio of those modules voting through the engine, replayed over
   the test window; :func:`backtest_baselines` - the baselines through the same engine and data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backtest.compute import fan_out
from backtest.replay import Progress, ReplayDriver
from backtest.result import RunResult
from backtest.run import run_backtest
from bot.engine.step import DecisionContext, Policy
from bot.events import GrossExposure, ModuleDecision, VariantWeights
from bot.store import MarketStore, MetricStore
from config.schema import AppConfig, CryptoModuleParams, MarsConfig
from strategies.agents.train import (
    CoinHistory,
    TrainedCryptoModule,
    Windows,
    coin_history,
    train_cm,
)
from strategies.baselines import baselines
from strategies.crypto_module import CryptoModule
from strategies.features.inputs import check_windows, fit_coin_features, read_coin_inputs
from strategies.mars.training import TrainedEnsemble
from strategies.portfolio import PortfolioVote
from strategies.registry import save_crypto_module


@dataclass(frozen=True)
class VoteRun:
    """A Crypto Module portfolio's backtest and every module decision it was built from."""

    result: RunResult
    decisions: list[ModuleDecision]


async def read_histories(
    cfg: AppConfig, market: MarketStore, metrics: MetricStore, coins: Sequence[str]
) -> dict[str, CoinHistory]:
    """Each coin's history with its DRU fitted on ``cfg.windows.train`` only.

    Every coin is checked before any feature selection: a window (train, validation or test)
    without bars to decide on raises :class:`~strategies.features.inputs.DataWindowError`, so a
    run whose test window lies outside the data stops before training, not after."""
    train = cfg.windows.train
    every = {coin: await read_coin_inputs(cfg, market, metrics, coin) for coin in coins}
    for inputs in every.values():
        check_windows(cfg, inputs, ("train", "validation", "test"))
    histories = {}
    for coin, inputs in every.items():
        spec = fit_coin_features(cfg, inputs, train.start_ms, train.end_ms)
        histories[coin] = coin_history(inputs.bars, inputs.metrics, cfg.market.timeframe, spec)
    return histories


@dataclass(frozen=True)
class TrainJob:
    """One Crypto Module to train: what :func:`run_train_job` needs, picklable (it travels to
    a worker process or a Ray task)."""

    history: CoinHistory
    windows: Windows
    params: CryptoModuleParams
    seed: int
    cost: float
    """The trading cost rate to train against (``[broker].trading_cost``)."""


def run_train_job(job: TrainJob) -> TrainedCryptoModule:
    """Train one module (top-level, for :func:`backtest.compute.fan_out`); its evaluation log
    comes back in ``extra["log"]`` instead of being written where the job runs."""
    return train_cm(job.history, job.windows, job.params, job.seed, cost=job.cost)


@dataclass(frozen=True)
class MarsTrainJob:
    """One coin's MARS ensembles to train, every seed of ``seeds`` in one batched network
    (picklable, like :class:`TrainJob`)."""

    history: CoinHistory
    windows: Windows
    params: CryptoModuleParams
    mars: MarsConfig
    seeds: tuple[int, ...]
    cost: float


def run_mars_job(job: MarsTrainJob) -> list[TrainedEnsemble]:
    """Train one coin's ensembles for every seed (top-level, for
    :func:`backtest.compute.fan_out`)."""
    from strategies.mars.training import train_ensembles

    return train_ensembles(
        job.history, job.windows, job.params, job.mars, list(job.seeds), cost=job.cost
    )


def save_trained(
    cfg: AppConfig, trained: TrainedCryptoModule, root: Path, *, log_name: str | None = None
) -> Path:
    """Save a trained module (and its evaluation log) into the registry at ``root``."""
    coin = trained.coin
    log_path = root / coin / (log_name or f".training-s{trained.seed}.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("".join(json.dumps(row) + "\n" for row in trained.extra.get("log", [])))
    return save_crypto_module(
        root,
        trained,
        config=cfg,
        training=cfg.training,
        exchange=cfg.market.exchange,
        symbol=cfg.market.symbol(coin),
        log_file=log_path,
    )


def train_modules(
    cfg: AppConfig,
    histories: Mapping[str, CoinHistory],
    seeds: Sequence[int],
    root: Path,
    *,
    on_trained: Callable[[str, int, Path, float], None] | None = None,
) -> dict[tuple[str, int], Path]:
    """Train every (coin, seed) module on ``cfg.windows``, fanned out on ``[compute]``
    (:func:`backtest.compute.fan_out`); returns their registry folders.

    ``on_trained(coin, seed, folder, seconds)`` is called after each one (progress, logs).
    """
    windows = Windows.from_config(cfg.windows)
    keys = [(coin, seed) for seed in seeds for coin in histories]
    cost = cfg.broker.trading_cost
    jobs = [TrainJob(histories[coin], windows, cfg.agents, seed, cost) for coin, seed in keys]
    folders: dict[tuple[str, int], Path] = {}

    def saved(index: int, trained: TrainedCryptoModule) -> None:
        coin, seed = keys[index]
        folders[coin, seed] = save_trained(cfg, trained, root)
        if on_trained is not None:
            on_trained(coin, seed, folders[coin, seed], trained.seconds)

    fan_out(run_train_job, jobs, cfg.compute, on_result=saved)
    return {key: folders[key] for key in keys}


async def replay_driver(
    cfg: AppConfig,
    market: MarketStore,
    metrics: MetricStore,
    coins: Sequence[str],
    start_ms: int,
    end_ms: int,
) -> ReplayDriver:
    """The replay of ``coins`` at the strategy timeframe, deciding in ``[start_ms, end_ms)``."""
    return await ReplayDriver.from_stores(
        market,
        metrics,
        exchange=cfg.market.exchange,
        symbols=[cfg.market.symbol(c) for c in coins],
        timeframe=cfg.market.timeframe,
        start_ms=start_ms,
        end_ms=end_ms,
    )


def vote_policy(cfg: AppConfig, folders: Mapping[str, Path]) -> PortfolioVote:
    """A :class:`PortfolioVote` over freshly loaded modules (coin -> registry folder)."""
    modules = [
        CryptoModule.load(folder, cfg.market.symbol(coin)) for coin, folder in folders.items()
    ]
    return PortfolioVote(cfg.market.quote, modules)


async def backtest_vote(
    cfg: AppConfig,
    folders: Mapping[str, Path],
    driver: ReplayDriver,
    *,
    name: str = "cryptorlpm",
    progress: Progress | None = None,
) -> VoteRun:
    """Replay ``driver`` with the vote of the modules in ``folders`` deciding."""
    recording = RecordingPolicy(vote_policy(cfg, folders))
    result = await run_backtest(cfg, recording, driver, name=name, progress=progress)
    return VoteRun(result, recording.decisions)


EXPLAINED_DECISIONS = 300
"""Decisions explained per coin in a report (evenly spaced over the run)."""


def explain_vote_run(
    cfg: AppConfig,
    folders: Mapping[str, Path],
    driver: ReplayDriver,
    result: RunResult,
    *,
    limit: int = EXPLAINED_DECISIONS,
) -> RunResult:
    """``result`` (the vote of the modules in ``folders`` replayed over ``driver``) with its
    :attr:`~backtest.result.RunResult.explanations`: at most ``limit`` evenly spaced decisions
    per coin, each module's state rebuilt from the replay and the position the account held
    (its sleeve of ``1 / m`` at least half in the coin, as the vote reads it)."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from strategies.explain import attribution_frame
    from strategies.explain_replay import evenly_spaced, explain_bars
    from strategies.registry import load_crypto_module

    weights = result.weights
    m = len(folders)
    metrics = driver.replayed_metrics()
    frames = []
    for coin, folder in folders.items():
        model = load_crypto_module(folder)
        open_time, ohlcv = driver.replayed_bars(cfg.market.symbol(coin))
        close = open_time + driver.step_ms
        held = weights[coin] if coin in weights else pd.Series(0.0, index=weights.index)
        positions = (held.reindex(close).fillna(0.0).to_numpy() * m >= 0.5).astype(np.float32)
        closes = evenly_spaced(weights.index.tolist(), limit)
        explained = explain_bars(
            model, driver.timeframe, open_time, ohlcv, metrics, positions, closes
        )
        frames.append(attribution_frame(explained))
    if not frames:
        return result
    return dataclasses.replace(result, explanations=pd.concat(frames, ignore_index=True))


class RecordingPolicy:
    """Wraps a policy and records the module decisions it notes while it runs (and, for the
    MARS policies, the controller's weights and the manager's exposure)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.decisions: list[ModuleDecision] = []
        self.regime: list[VariantWeights | GrossExposure] = []
        prepare = getattr(policy, "prepare", None)
        if prepare is not None:
            self.prepare = prepare

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        """The wrapped policy's answer; its module decisions are kept."""
        answer = self.policy.decide(context)
        decisions = self.decisions
        for note in context.notes:
            kind = type(note)  # exact types: the events are final NamedTuples
            if kind is ModuleDecision:
                decisions.append(note)
            elif kind is VariantWeights or kind is GrossExposure:
                self.regime.append(note)
        return answer


async def backtest_seeds(
    cfg: AppConfig,
    folders: Mapping[tuple[str, int], Path],
    coins: Sequence[str],
    seeds: Sequence[int],
    driver: ReplayDriver,
) -> dict[int, RunResult]:
    """The vote of ``coins``' modules, once per seed (``folders`` keyed by coin and seed)."""
    runs = {}
    for seed in seeds:
        vote = await backtest_vote(cfg, {c: folders[c, seed] for c in coins}, driver)
        runs[seed] = vote.result
    return runs


def train_mars_modules(
    cfg: AppConfig,
    histories: Mapping[str, CoinHistory],
    seeds: Sequence[int],
    root: Path,
    *,
    on_trained: Callable[[str, int, Path, float], None] | None = None,
) -> dict[tuple[str, int], Path]:
    """Train every coin's MARS ensembles on ``cfg.windows`` (all seeds of a coin in one batched
    network), fanned out over coins on ``[compute]``; returns the folders by (coin, seed)."""
    from strategies.mars.artifact import save_ensemble

    windows = Windows.from_config(cfg.windows)
    coins = list(histories)
    cost = cfg.broker.trading_cost
    jobs = [
        MarsTrainJob(histories[c], windows, cfg.agents, cfg.mars, tuple(seeds), cost) for c in coins
    ]
    folders: dict[tuple[str, int], Path] = {}

    def saved(index: int, trained: list[TrainedEnsemble]) -> None:
        for one in trained:
            folders[coins[index], one.seed] = save_ensemble(Path(root) / "mars", one)
            if on_trained is not None:
                on_trained(coins[index], one.seed, folders[coins[index], one.seed], one.seconds)

    fan_out(run_mars_job, jobs, cfg.compute, on_result=saved)
    return folders


def mars_policy(cfg: AppConfig, folders: Mapping[str, Path], *, manager: bool) -> Policy:
    """A ``mars`` (or ``mars+manager``) policy over freshly loaded ensembles (coin -> folder),
    deciding over all time with one set of ensembles."""
    from strategies.mars.artifact import load_ensemble
    from strategies.mars.module import MarsModule
    from strategies.mars.policy import ALWAYS, MarsPolicy, ModuleSet

    trend_days = cfg.baselines.trend_days
    modules = {
        coin: MarsModule(load_ensemble(folder), cfg.market.symbol(coin), trend_days)
        for coin, folder in folders.items()
    }
    return MarsPolicy(
        cfg.market.quote,
        tuple(folders),
        [ModuleSet(*ALWAYS, modules)],
        cfg.mars,
        timeframe=cfg.market.timeframe,
        trend_days=trend_days,
        cost=cfg.broker.trading_cost,
        manager=manager,
    )


async def backtest_policy_seeds(
    cfg: AppConfig,
    policy: str,
    folders: Mapping[tuple[str, int], Path],
    coins: Sequence[str],
    seeds: Sequence[int],
    driver: ReplayDriver,
) -> tuple[dict[int, RunResult], dict[int, list[VariantWeights | GrossExposure]]]:
    """``policy`` (``cryptorlpm``, ``mars`` or ``mars+manager``) of ``coins`` once per seed:
    the runs and, for the MARS policies, the controller's and the manager's notes."""
    runs, notes = {}, {}
    for seed in seeds:
        chosen = {c: folders[c, seed] for c in coins}
        if policy == "cryptorlpm":
            built: Policy = vote_policy(cfg, chosen)
        else:
            built = mars_policy(cfg, chosen, manager=policy == "mars+manager")
        recording = RecordingPolicy(built)
        runs[seed] = await run_backtest(cfg, recording, driver, name=policy)
        notes[seed] = recording.regime
    return runs, notes


async def backtest_baselines(
    cfg: AppConfig, coins: Sequence[str], driver: ReplayDriver
) -> list[RunResult]:
    """Buy & hold of each coin, both equal-weight portfolios and the trend filter (its window
    from ``[baselines].trend_days``), through the same engine."""
    policies = baselines(coins, cfg.market.timeframe, cfg.baselines.trend_days)
    return [await run_backtest(cfg, policy, driver, name=policy.name) for policy in policies]


@dataclass(frozen=True)
class SeedSummary:
    """A strategy over several seeds: each seed's run and metrics, the median and its run."""

    runs: dict[int, RunResult]
    metrics: dict[int, dict[str, float | int]]
    median: dict[str, float]
    median_seed: int


def summarise_seeds(runs: Mapping[int, RunResult]) -> SeedSummary:
    """Per-seed metrics, their median per metric, and the seed whose ARR is the median one
    (its run is the one drawn in plots: a real run, not an average of curves)."""
    import statistics

    from backtest.metrics import compute_metrics

    metrics = {seed: compute_metrics(run) for seed, run in runs.items()}
    keys = next(iter(metrics.values())).keys()
    median = {
        key: float(statistics.median(float(m[key]) for m in metrics.values())) for key in keys
    }
    by_arr = sorted(metrics, key=lambda seed: (metrics[seed]["arr"], seed))
    return SeedSummary(dict(runs), metrics, median, by_arr[(len(by_arr) - 1) // 2])
