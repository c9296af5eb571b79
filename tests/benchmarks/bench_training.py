"""Training one Crypto Module: our learner against stable-baselines3's DQN, on the same env.

One coin of the synthetic market (3 years of 6h bars, DRU features), the default hyperparameters
of :class:`~strategies.agents.params.CryptoModuleParams`. Both learners train the EAM, then the SAM
(on the states with our EAM's signal stacked in, so both SAMs see the same environment), with:

* the same environment: SB3 runs :class:`~strategies.agents.env.CryptoModuleEnv`, the
  ``gymnasium`` version of our vectorised env (same states, rewards, episodes, restarts);
* the same number of env steps and of gradient updates (counted, and printed, for both);
* the same networks (SB3's Q-network is our body as a features extractor plus a linear head,
  which is exactly our head), batch size, learning rate, Adam (fused for both), Huber loss,
  gradient clipping, epsilon schedule, target copy interval and torch threads.

Our run skips the periodic validation (one score at the end) so that both do the same work.
SB3 runs as it is normally used on one ``gymnasium`` env (``n_envs=1``, training every
``num_envs`` steps); a second SB3 run uses ``num_envs`` copies in a ``DummyVecEnv``, stepped as one
batch like ours, for reference. Prints each wall time and the ratios. Target: ours >= 3x faster.

stable-baselines3 is a benchmark-only dependency: ``pip install stable-baselines3`` (it must not
replace torch; see the README).

Run: ``.venv/bin/python tests/benchmarks/bench_training.py [--quick]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.timeframes import to_ms
from config.schema import FeatureConfig, WindowsConfig
from strategies.agents.env import CryptoModuleEnv
from strategies.agents.learner import seed_everything
from strategies.agents.networks import EamQNetwork, SamQNetwork, split_position
from strategies.agents.observation import build_observations, signal_windows
from strategies.agents.params import CryptoModuleParams, DQNParams
from strategies.agents.train import (
    TrainingLog,
    Windows,
    decision_range,
    eam_signals,
    refine_history,
    train_agent,
)

try:
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv
except ImportError:  # pragma: no cover - a benchmark-only dependency
    SB3DQN = None
    BaseFeaturesExtractor = nn.Module


COST = 0.0015
"""The default ``[broker]`` trading cost (0.1 % fee plus 5 bp slippage)."""


class OurBody(BaseFeaturesExtractor):
    """Our Q-network without its last linear layer, as an SB3 features extractor."""

    def __init__(self, observation_space, kind: str, args: dict) -> None:
        network = EamQNetwork(**args) if kind == "eam" else SamQNetwork(**args)
        super().__init__(observation_space, features_dim=network.out_features)
        del network.head  # SB3 adds its own linear head: the same layer
        self.network, self.kind = network, kind

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.kind == "eam":
            return self.network.features(obs)
        data, position = split_position(obs)
        return self.network.hidden_features(self.network.features(data), position)


def build_history():
    market = generate_market(
        ["BTC", "ETH", "SOL"], to_ms("2020-01-01"), to_ms("2023-01-01"), seed=7, scenarios=()
    )
    bars = resample_candles(market.candles["ETH"], "1h", "6h").frame
    windows = Windows.from_config(WindowsConfig())
    history = refine_history(
        "ETH",
        bars,
        market.metrics,
        "6h",
        FeatureConfig(),
        windows.train,
        market_wide_assets=["MARKET"],
    )
    return history, windows


def network_args(kind: str, params: CryptoModuleParams, n_channels: int) -> dict:
    agent = params.eam if kind == "eam" else params.sam
    if kind == "eam":
        return {
            "in_features": n_channels,
            "window": params.window,
            "channels": agent.channels[0],
            "hidden": agent.hidden,
        }
    return {"in_channels": n_channels, "window": params.window, "channels": agent.channels}


def run_ours(kind, tensors, train, validation, params, seed):
    """Our learner; returns (seconds, env steps, updates, network)."""
    agent: DQNParams = params.eam if kind == "eam" else params.sam
    agent = agent.model_copy(update={"eval_interval": 10**9})  # one evaluation, at the end
    generator = seed_everything(seed, params.torch_threads)
    args = network_args(kind, params, tensors.states.shape[1])
    network = EamQNetwork(**args) if kind == "eam" else SamQNetwork(**args)
    started = time.perf_counter()
    result = train_agent(
        kind, network, tensors, train, validation, agent, params, generator, TrainingLog(None),
        cost=COST,
    )  # fmt: skip
    return time.perf_counter() - started, result.env_steps, result.updates, network


def run_sb3(kind, tensors, train, params, seed, n_envs):
    """SB3's DQN on the gymnasium env; returns (seconds, env steps, updates)."""
    agent: DQNParams = params.eam if kind == "eam" else params.sam
    n = params.num_envs
    total = (agent.total_env_steps // n) * n

    def make():
        return CryptoModuleEnv(
            tensors,
            kind,
            train,
            episode_length=params.episode_length,
            fee=COST,
            reward_scale=params.reward_scale,
        )

    env = DummyVecEnv([make] * n_envs)
    # Ours: `updates_per_step` updates after every vector step of `n` env steps, and a target
    # copy every `target_update_interval` updates; SB3 counts both in env steps.
    train_freq = n if n_envs == 1 else 1
    target_interval = agent.target_update_interval * n // agent.updates_per_step
    seed_everything(seed, params.torch_threads)
    model = SB3DQN(
        "MlpPolicy",
        env,
        learning_rate=agent.learning_rate,
        buffer_size=agent.buffer_size,
        learning_starts=agent.learning_starts,
        batch_size=agent.batch_size,
        tau=1.0,
        gamma=agent.gamma,
        train_freq=train_freq,
        gradient_steps=agent.updates_per_step,
        target_update_interval=target_interval,
        exploration_fraction=agent.exploration_fraction,
        exploration_initial_eps=agent.epsilon_start,
        exploration_final_eps=agent.epsilon_end,
        max_grad_norm=agent.max_grad_norm,
        policy_kwargs={
            "features_extractor_class": OurBody,
            "features_extractor_kwargs": {
                "kind": kind,
                "args": network_args(kind, params, tensors.states.shape[1]),
            },
            "net_arch": [],
            "optimizer_kwargs": {"fused": True},
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(total_timesteps=total)
    return time.perf_counter() - started, model.num_timesteps, model._n_updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the env steps")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if SB3DQN is None:
        print("stable-baselines3 is not installed: pip install stable-baselines3 (keep torch)")
        return
    import stable_baselines3

    params = CryptoModuleParams()
    if args.quick:
        params = params.model_copy(
            update={
                "eam": params.eam.model_copy(update={"total_env_steps": 6_000}),
                "sam": params.sam.model_copy(update={"total_env_steps": 12_000}),
            }
        )
    history, windows = build_history()
    from strategies.agents.env import CoinTensors

    base = build_observations(history.ohlcv, history.features, history.ready, params.window)
    tensors = CoinTensors.from_arrays(base, history.ohlcv[:, 3], history.close_time)
    train = decision_range(history.close_time, windows.train, params.window)
    validation = decision_range(history.close_time, windows.validation, params.window)
    print(
        f"torch {torch.__version__}, stable-baselines3 {stable_baselines3.__version__}, "
        f"threads {params.torch_threads}; ETH 6h, {len(history.close_time)} bars, "
        f"{train.last - train.first} training decisions, state {tuple(base.shape[1:])}"
    )

    rows = []
    ours_eam = run_ours("eam", tensors, train, validation, params, args.seed)
    signals = eam_signals(ours_eam[3], tensors.states, params.window)
    sam_tensors = tensors.with_states(
        np.concatenate((base, signal_windows(signals, params.window)), axis=1)
    )
    ours_sam = run_ours("sam", sam_tensors, train, validation, params, args.seed)
    rows.append(("ours (vectorised)", ours_eam[:3], ours_sam[:3]))
    for n_envs, name in ((1, "stable-baselines3"), (params.num_envs, "stable-baselines3 x16 envs")):
        eam = run_sb3("eam", tensors, train, params, args.seed, n_envs)
        sam = run_sb3("sam", sam_tensors, train, params, args.seed, n_envs)
        rows.append((name, eam, sam))

    print(f"\n{'learner':<28}{'EAM s':>8}{'SAM s':>8}{'CM s':>8}{'env steps':>11}{'updates':>9}")
    for name, eam, sam in rows:
        print(
            f"{name:<28}{eam[0]:8.1f}{sam[0]:8.1f}{eam[0] + sam[0]:8.1f}"
            f"{eam[1] + sam[1]:11d}{eam[2] + sam[2]:9d}"
        )
    ours = rows[0][1][0] + rows[0][2][0]
    for name, eam, sam in rows[1:]:
        print(f"ratio {name} / ours: {(eam[0] + sam[0]) / ours:.1f}x")


if __name__ == "__main__":
    main()
