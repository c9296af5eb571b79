"""Training one Crypto Module (EAM + SAM), read top to bottom.

1. The coin's bars and the DRU's refined features become one state per bar
   (:mod:`strategies.agents.observation`), precomputed once.
2. The config's dates become decision ranges: train, validation and (held out) test.
3. The EAM (optional) learns buy/hold/sell with DQN on the training range; the checkpoint with
   the best validation score is kept. Its greedy signal at every bar becomes a state channel.
4. The SAM learns all cash / all coin the same way, on the states with the signal stacked in.
5. Scores on validation (and test, if configured) are computed for the kept checkpoints, next to
   buy & hold on the same bars.

Validation scores: SAM, the cumulative net log return of its greedy policy over the validation
decisions, starting in cash; EAM, the sum of its action-signed returns (its reward, unscaled).
The trading cost charged in rewards and scores is ``cost``, which the callers take from
``[broker]`` (:attr:`~config.schema.BrokerConfig.trading_cost`: fee plus slippage), so training
and backtests pay one cost.

Every hyperparameter comes from :class:`~strategies.agents.params.CryptoModuleParams`; seeding
happens once, in :func:`~strategies.agents.learner.seed_everything`, and all randomness of a run
(restarts, exploration, replay sampling) is drawn from the generator it returns, so one seed
gives the same actions every time. Progress is shown with ``rich``; losses and validation scores
go to a JSONL log, one line per evaluation.

:func:`train_cm` works on in-memory data (tests, benchmarks); :func:`train_crypto_module` reads the
stores, fits the DRU and saves each trained module to the registry (``cryptorlpm train``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from bot.timeframes import timeframe_ms
from config.schema import AppConfig, WindowsConfig
from strategies.agents.env import (
    AgentKind,
    CoinTensors,
    DecisionRange,
    VectorTradingEnv,
    greedy_sam_rollout,
    portfolio_log_returns,
)
from strategies.agents.learner import DQN, ReplayBuffer, linear_schedule, seed_everything
from strategies.agents.networks import EamQNetwork, SamQNetwork
from strategies.agents.observation import FeatureSchema, build_observations, signal_windows
from strategies.agents.params import CryptoModuleParams, DQNParams, TrainingConfig
from strategies.agents.trained import AgentResult, TrainedCryptoModule
from strategies.features import FeatureSpec
from strategies.features.inputs import DataWindowError
from strategies.registry import save_crypto_module

# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoinHistory:
    """One coin's bars and the DRU's features at each bar close: what training starts from.

    ``open_time``: ``(T,)`` int64 epoch ms; ``ohlcv``: ``(T, 5)``; ``features``: ``(T, k)`` and
    ``ready``: ``(T,)`` from :func:`~strategies.features.compute_features`. ``feature_spec`` is
    the fitted DRU (None only for hand-made feature arrays in tests).
    """

    coin: str
    timeframe: str
    open_time: np.ndarray
    ohlcv: np.ndarray
    features: np.ndarray
    ready: np.ndarray
    feature_names: tuple[str, ...]
    feature_spec: FeatureSpec | None = None

    @property
    def close_time(self) -> np.ndarray:
        """Close time of every bar (open time + timeframe)."""
        return self.open_time + timeframe_ms(self.timeframe)


@dataclass(frozen=True)
class Windows:
    """Half-open ``[start_ms, end_ms)`` ranges of bar close times."""

    train: tuple[int, int]
    validation: tuple[int, int]
    test: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, windows: WindowsConfig) -> Windows:
        """The config's inclusive day ranges (``[windows]``) as close-time ranges."""
        return cls(
            (windows.train.start_ms, windows.train.end_ms),
            (windows.validation.start_ms, windows.validation.end_ms),
            (windows.test.start_ms, windows.test.end_ms),
        )


def decision_range(
    close_time: np.ndarray, window_ms: tuple[int, int], window: int
) -> DecisionRange:
    """Bars ``t`` whose decision lies inside ``window_ms``: bar ``t`` closes at or after its
    start, bar ``t + 1`` (where the reward is earned) closes by its end, and ``t`` has a full
    state window."""
    start, end = window_ms
    first = max(int(np.searchsorted(close_time, start, side="left")), window - 1)
    last = int(np.searchsorted(close_time, end, side="right")) - 1
    if last <= first:
        raise DataWindowError(
            f"no decisions in [{pd.Timestamp(start, unit='ms')}, {pd.Timestamp(end, unit='ms')}): "
            f"the bars cover {pd.Timestamp(int(close_time[0]), unit='ms')} .. "
            f"{pd.Timestamp(int(close_time[-1]), unit='ms')}"
        )
    return DecisionRange(first, last)


# --- outputs ------------------------------------------------------------------------------------


class TrainingLog:
    """Evaluation lines (losses, epsilon, validation scores) appended to a JSONL file."""

    def __init__(self, path: Path | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, **row: Any) -> None:
        """Record one line."""
        self.rows.append(row)
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()


# --- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def greedy_actions(network: nn.Module, states: torch.Tensor, kind: AgentKind) -> np.ndarray:
    """Greedy actions at consecutive bars; the SAM starts in cash and carries its position."""
    features = network.features(states)
    if kind == "eam":
        return network.q_values(features).argmax(dim=1).numpy()
    zeros = torch.zeros(len(states))
    by_position = torch.stack(
        (network.q_values(features, zeros), network.q_values(features, zeros + 1.0)), dim=1
    )
    return greedy_sam_rollout(by_position.numpy())


def agent_score(
    network: nn.Module, tensors: CoinTensors, decisions: DecisionRange, kind: AgentKind, fee: float
) -> float:
    """Validation score of an agent over ``decisions`` (see the module docstring)."""
    rows = slice(decisions.first, decisions.last)
    actions = greedy_actions(network, tensors.states[rows], kind)
    if kind == "eam":
        return float(np.sum((actions - 1) * tensors.simple_returns[rows].numpy()))
    return float(np.sum(portfolio_log_returns(tensors.log_returns[rows].numpy(), actions, fee)))


def buy_and_hold_score(tensors: CoinTensors, decisions: DecisionRange, fee: float) -> float:
    """Net log return of buying at the first decision and holding to the end."""
    log_returns = tensors.log_returns[decisions.first : decisions.last].numpy()
    return float(np.sum(portfolio_log_returns(log_returns, np.ones(len(log_returns)), fee)))


@torch.no_grad()
def eam_signals(network: EamQNetwork, states: torch.Tensor, window: int) -> np.ndarray:
    """The EAM's greedy signal (-1 sell, 0 hold, +1 buy) at every bar (0 without a full state)."""
    signals = (network(states).argmax(dim=1) - 1).numpy().astype(np.float32)
    signals[: window - 1] = 0.0
    return signals


# --- one agent ----------------------------------------------------------------------------------


def train_agent(
    kind: AgentKind,
    network: nn.Module,
    tensors: CoinTensors,
    train: DecisionRange,
    validation: DecisionRange,
    agent: DQNParams,
    params: CryptoModuleParams,
    generator: torch.Generator,
    log: TrainingLog,
    progress: Progress | None = None,
    *,
    cost: float,
) -> AgentResult:
    """Train one agent with DQN and keep the checkpoint with the best validation score
    (among trained checkpoints only when ``agent.trained_checkpoints_only``)."""
    started = time.perf_counter()
    env = VectorTradingEnv(
        tensors,
        kind,
        train,
        num_envs=params.num_envs,
        episode_length=params.episode_length,
        fee=cost,
        reward_scale=params.reward_scale,
        generator=generator,
        turnover_penalty=params.turnover_penalty if kind == "sam" else 0.0,
    )
    learner = DQN(
        network,
        tensors.states[: train.last + 1],  # the bars training can reach; nothing later
        gamma=agent.gamma,
        learning_rate=agent.learning_rate,
        huber_delta=agent.huber_delta,
        max_grad_norm=agent.max_grad_norm,
        double=agent.double_dqn,
    )
    buffer = ReplayBuffer(agent.buffer_size)
    vector_steps = max(agent.total_env_steps // params.num_envs, 1)
    exploration_steps = int(agent.exploration_fraction * vector_steps)
    task = progress.add_task(f"{kind.upper()}", total=vector_steps) if progress else None

    best_score, best_state, best_step = -np.inf, copy.deepcopy(network.state_dict()), 0
    kept_any = False
    updates, loss = 0, float("nan")
    for step in range(1, vector_steps + 1):
        # Act in every environment at once, and remember what happened.
        epsilon = linear_schedule(agent.epsilon_start, agent.epsilon_end, exploration_steps, step)
        actions = learner.act(env.t, env.position, epsilon, generator)
        buffer.add(env.step(actions))

        # Learn from replayed transitions; copy the online net into the target now and then.
        if step * params.num_envs > agent.learning_starts:
            for _ in range(agent.updates_per_step):
                loss = learner.update(buffer.sample(agent.batch_size, generator))
                updates += 1
                if updates % agent.target_update_interval == 0:
                    learner.sync_target()

        # Score the greedy policy on validation; keep the best checkpoint.
        if step % agent.eval_interval == 0 or step == vector_steps:
            score = agent_score(network, tensors, validation, kind, cost)
            eligible = updates > 0 or not agent.trained_checkpoints_only
            last = step == vector_steps and not kept_any  # never keep nothing
            if (eligible and score > best_score) or last:
                best_score, best_step = score, step * params.num_envs
                best_state = copy.deepcopy(network.state_dict())
                kept_any = True
            log.write(
                agent=kind,
                env_steps=step * params.num_envs,
                updates=updates,
                epsilon=round(epsilon, 4),
                loss=None if np.isnan(loss) else loss,
                validation=score,
                best_validation=best_score,
                elapsed_s=round(time.perf_counter() - started, 3),
            )
            if progress is not None and task is not None:
                progress.update(
                    task,
                    completed=step,
                    description=f"{kind.upper()} loss {loss:.3f} val {score:+.3f} best "
                    f"{best_score:+.3f}",
                )
    if progress is not None and task is not None:
        progress.update(task, completed=vector_steps)

    network.load_state_dict(best_state)
    return AgentResult(
        best_state,
        best_score,
        best_step,
        vector_steps * params.num_envs,
        updates,
        time.perf_counter() - started,
    )


# --- one Crypto Module --------------------------------------------------------------------------


def train_cm(
    history: CoinHistory,
    windows: Windows,
    params: CryptoModuleParams,
    seed: int,
    *,
    cost: float,
    log_path: Path | None = None,
    progress: bool = False,
) -> TrainedCryptoModule:
    """Train the EAM (if ``params.use_eam``) and the SAM of one coin with one seed, charging
    ``cost`` (the trading cost rate: ``[broker]``'s fee plus slippage) on every trade."""
    started = time.perf_counter()
    generator = seed_everything(seed, params.torch_threads)

    # 1. States of every bar, and the decision ranges of each window.
    base_states = build_observations(history.ohlcv, history.features, history.ready, params.window)
    tensors = CoinTensors.from_arrays(base_states, history.ohlcv[:, 3], history.close_time)
    close_time = history.close_time
    train = decision_range(close_time, windows.train, params.window)
    validation = decision_range(close_time, windows.validation, params.window)
    test = _optional_range(close_time, windows.test, params.window)
    schema = FeatureSchema(
        metric_features=history.feature_names,
        window=params.window,
        timeframe=history.timeframe,
        eam_signal=params.use_eam,
    )
    n_features = schema.n_features
    log = TrainingLog(log_path)
    bar = _progress() if progress else None
    scores: dict[str, dict[str, float]] = {"validation": {}, "test": {}}
    try:
        if bar is not None:
            bar.start()

        # 2. EAM: learns buy/hold/sell; its greedy signal becomes a channel of the SAM's state.
        eam_result, sam_tensors = None, tensors
        network_args: dict[str, dict[str, Any]] = {}
        if params.use_eam:
            eam_args = {
                "in_features": n_features,
                "window": params.window,
                "channels": params.eam.channels[0],
                "hidden": params.eam.hidden,
            }
            eam = EamQNetwork(**eam_args)
            network_args["eam"] = eam_args
            eam_result = train_agent(
                "eam", eam, tensors, train, validation, params.eam, params, generator, log, bar,
                cost=cost,
            )  # fmt: skip
            signals = eam_signals(eam, tensors.states, params.window)
            sam_states = np.concatenate((base_states, signal_windows(signals, params.window)), 1)
            sam_tensors = tensors.with_states(sam_states)
            scores["validation"]["eam"] = eam_result.best_validation
            if test is not None:
                scores["test"]["eam"] = agent_score(eam, tensors, test, "eam", cost)

        # 3. SAM: all cash or all coin, on the states with the EAM signal stacked in.
        sam_args = {
            "in_channels": n_features + (1 if params.use_eam else 0),
            "window": params.window,
            "channels": list(params.sam.channels),
        }
        sam = SamQNetwork(**sam_args)
        network_args["sam"] = sam_args
        sam_result = train_agent(
            "sam", sam, sam_tensors, train, validation, params.sam, params, generator, log, bar,
            cost=cost,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.stop()
        log.close()

    # 4. Scores of the kept checkpoints, next to buy & hold on the same decisions.
    scores["validation"]["sam"] = sam_result.best_validation
    scores["validation"]["buy_and_hold"] = buy_and_hold_score(tensors, validation, cost)
    if test is not None:
        scores["test"]["sam"] = agent_score(sam, sam_tensors, test, "sam", cost)
        scores["test"]["buy_and_hold"] = buy_and_hold_score(tensors, test, cost)
    ranges = {"bars": [int(history.open_time[0]), int(close_time[-1])]}
    for name, decisions in (("train", train), ("validation", validation), ("test", test)):
        if decisions is not None:
            ranges[name] = [int(close_time[decisions.first]), int(close_time[decisions.last])]
    return TrainedCryptoModule(
        coin=history.coin,
        seed=seed,
        params=params,
        schema=schema,
        feature_spec=history.feature_spec,
        eam=eam_result,
        sam=sam_result,
        network_args=network_args,
        scores=scores,
        data_ranges=ranges,
        seconds=time.perf_counter() - started,
        extra={"log": log.rows},
        cost=cost,
    )


def _optional_range(
    close_time: np.ndarray, window_ms: tuple[int, int] | None, window: int
) -> DecisionRange | None:
    """The test range, or None when there is no test window or no data in it (the paper's
    test window lies beyond ``../shared/data``)."""
    if window_ms is None:
        return None
    try:
        return decision_range(close_time, window_ms, window)
    except ValueError:
        return None


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


# --- from the stores to the registry ------------------------------------------------------------


def refine_history(
    coin: str,
    bars: pd.DataFrame,
    metrics: pd.DataFrame,
    timeframe: str,
    features: Any,
    train_window: tuple[int, int],
    *,
    market_wide_assets: Sequence[str] = (),
    publication_lag_ms: int = 3_600_000,
) -> CoinHistory:
    """Fit the DRU on the training window and compute the features at every bar.

    ``bars``: ``open_time, open, high, low, close, volume`` at ``timeframe``; ``metrics``: the
    long metric frame (every asset, so that market-wide candidates can be offered);
    ``features``: the config's :class:`~config.schema.FeatureConfig`.
    """
    from strategies.features.inputs import fit_features

    spec = fit_features(
        coin,
        bars,
        metrics,
        timeframe,
        features,
        train_window[0],
        train_window[1],
        market_wide_assets=market_wide_assets,
        publication_lag_ms=publication_lag_ms,
    )
    return coin_history(bars, metrics, timeframe, spec)


def coin_history(
    bars: pd.DataFrame, metrics: pd.DataFrame, timeframe: str, spec: Any
) -> CoinHistory:
    """A coin's bars and its refined features at every bar, computed with a fitted ``spec``
    (:class:`~strategies.features.FeatureSpec`) by the DRU's batch feature function."""
    from strategies.features import compute_features

    frame = compute_features(spec, bars, metrics, timeframe_ms(timeframe))
    return CoinHistory(
        coin=spec.coin,
        timeframe=timeframe,
        open_time=bars["open_time"].to_numpy(dtype=np.int64),
        ohlcv=bars[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64),
        features=frame.features,
        ready=frame.ready,
        feature_names=frame.names,
        feature_spec=spec,
    )


async def read_history(cfg: AppConfig, coin: str) -> CoinHistory:
    """``coin``'s stored bars and metrics, with the DRU fitted on ``cfg.windows.train`` only.

    Raises :class:`~strategies.features.inputs.DataWindowError` when the training or the
    validation window has no bars to decide on."""
    from bot.store import MarketStore, MetricStore
    from strategies.features.inputs import check_windows, fit_coin_features, read_coin_inputs

    async with (
        await MarketStore.open(cfg.data.market_path) as market,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        inputs = await read_coin_inputs(cfg, market, metrics, coin)
    check_windows(cfg, inputs, ("train", "validation"))
    train = cfg.windows.train
    spec = fit_coin_features(cfg, inputs, train.start_ms, train.end_ms)
    return coin_history(inputs.bars, inputs.metrics, cfg.market.timeframe, spec)


def train_crypto_module(
    cfg: AppConfig,
    coin: str,
    seed: int | None = None,
    *,
    root: Path | None = None,
    training: TrainingConfig | None = None,
    params: CryptoModuleParams | None = None,
    progress: bool = True,
) -> list[Path]:
    """``cryptorlpm train``: train ``coin``'s Crypto Module for ``seed`` (or every seed of the
    training config) on the stored data, with the dates of ``cfg.windows``, and save each into
    the registry.

    ``training``/``params`` default to ``cfg.training``/``cfg.agents`` once those sections exist,
    else to their defaults. Returns the artifact folders.
    """
    training = training or cfg.training
    params = params or cfg.agents
    if coin not in cfg.market.coins:
        raise ValueError(f"coin {coin!r} is not in market.coins {list(cfg.market.coins)}")
    windows = Windows.from_config(cfg.windows)
    history = asyncio.run(read_history(cfg, coin))
    root = Path(root or training.models_dir)
    folders = []
    for one_seed in (seed,) if seed is not None else training.seeds:
        log_path = root / coin / ".training.jsonl"
        log_path.unlink(missing_ok=True)
        trained = train_cm(
            history,
            windows,
            params,
            one_seed,
            cost=cfg.broker.trading_cost,
            log_path=log_path,
            progress=progress,
        )
        folders.append(
            save_crypto_module(
                root,
                trained,
                config=cfg,
                training=training,
                exchange=cfg.market.exchange,
                symbol=cfg.market.symbol(coin),
                log_file=log_path,
            )
        )
    return folders
