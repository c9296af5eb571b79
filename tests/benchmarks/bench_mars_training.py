"""Training a coin's MARS variants: K variants as one batched network, against K sequential
trainings and against stable-baselines3's DQN (one env, and 16 envs), at equal updates.

One coin of the synthetic market (ETH, 6h bars, DRU features), the default ``[mars]`` ladder of
K = 5 learned variants and the default SAM budget of ``[agents.sam]`` (``--quick``: a quarter).
Rows, all in this process, one after the other:

* ``batched K``: :func:`~strategies.mars.training.train_ensembles`, the K variants as one
  :class:`~strategies.mars.network.VariantStack` (one seed);
* ``batched K x 5 seeds``: the same with 5 seeds (25 members) in one network;
* ``sequential K``: K trainings of one variant each (the same code, a one-member stack);
* ``stable-baselines3 (1 env)`` / ``(16 envs)``: SB3's DQN on the ``gymnasium`` env of the same
  coin (:class:`~strategies.agents.env.CryptoModuleEnv`, SAM states without the EAM channel),
  with our SAM body as its features extractor, the same env steps, gradient updates, batch size,
  learning rate, target interval and torch threads. SB3 trains one agent per run and has no
  safety critic (the MARS members also learn theirs: a little more work per update); its K
  variants are K runs, timed once and multiplied by K (printed both ways).

Every learner makes the same number of gradient updates per agent (printed). Prints wall times
and the ratios against ``batched K``.

stable-baselines3 is a benchmark-only dependency (``pip install stable-baselines3``, keeping
torch); without it the SB3 rows are skipped and said so.

Run: ``.venv/bin/python tests/benchmarks/bench_mars_training.py [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config.schema import MarsConfig
from strategies.agents.env import CoinTensors, CryptoModuleEnv
from strategies.agents.learner import seed_everything
from strategies.agents.observation import build_observations
from strategies.agents.params import CryptoModuleParams
from strategies.agents.train import decision_range
from strategies.mars.training import train_ensembles
from tests.benchmarks.bench_training import SB3DQN, OurBody, build_history

COST = 0.0015


def run_batched(history, windows, params, mars, seeds) -> tuple[float, int]:
    started = time.perf_counter()
    out = train_ensembles(history, windows, params, mars, seeds, cost=COST)
    return time.perf_counter() - started, out[0].training_run["updates"]


def run_sb3(history, windows, params, n_envs: int, seed: int = 1) -> tuple[float, int]:
    from stable_baselines3.common.vec_env import DummyVecEnv

    agent = params.sam
    states = build_observations(history.ohlcv, history.features, history.ready, params.window)
    tensors = CoinTensors.from_arrays(states, history.ohlcv[:, 3], history.close_time)
    train = decision_range(history.close_time, windows.train, params.window)
    n = params.num_envs
    total = (agent.total_env_steps // n) * n

    def make():
        return CryptoModuleEnv(
            tensors, "sam", train, episode_length=params.episode_length, fee=COST,
            reward_scale=params.reward_scale,
        )  # fmt: skip

    env = DummyVecEnv([make] * n_envs)
    train_freq = n if n_envs == 1 else 1  # one update per n env steps, like ours
    seed_everything(seed, params.torch_threads)
    args = {"in_channels": states.shape[1], "window": params.window, "channels": agent.channels}
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
        target_update_interval=agent.target_update_interval * n // agent.updates_per_step,
        exploration_fraction=agent.exploration_fraction,
        exploration_initial_eps=agent.epsilon_start,
        exploration_final_eps=agent.epsilon_end,
        max_grad_norm=agent.max_grad_norm,
        policy_kwargs={
            "features_extractor_class": OurBody,
            "features_extractor_kwargs": {"kind": "sam", "args": args},
            "net_arch": [],
            "optimizer_kwargs": {"fused": True},
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(total_timesteps=total)
    return time.perf_counter() - started, model._n_updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the env steps")
    args = parser.parse_args()
    params = CryptoModuleParams()
    if args.quick:
        params = params.model_copy(
            update={"sam": params.sam.model_copy(update={"total_env_steps": 12_000})}
        )
    mars = MarsConfig()
    k = len(mars.variants)
    history, windows = build_history()
    print(
        f"ETH 6h, {len(history.close_time)} bars; K = {k} learned variants; SAM budget "
        f"{params.sam.total_env_steps} env steps, {params.num_envs} envs, batch "
        f"{params.sam.batch_size}, torch threads {params.torch_threads}"
    )
    rows: list[tuple[str, float, int, int]] = []  # name, seconds, updates per agent, agents
    seconds, updates = run_batched(history, windows, params, mars, [1])
    rows.append((f"batched K={k} (one network)", seconds, updates, k))
    seconds, updates = run_batched(history, windows, params, mars, [1, 2, 3, 4, 5])
    rows.append((f"batched K={k} x 5 seeds", seconds, updates, 5 * k))
    total, single = 0.0, 0.0
    for variant in mars.variants:
        alone = mars.model_copy(update={"variants": (variant,), "conservative": ("cash",)})
        seconds, updates = run_batched(history, windows, params, alone, [1])
        total += seconds
        single = single or seconds
    rows.append((f"sequential K={k} (one variant each)", total, updates, k))
    if SB3DQN is None:
        print("stable-baselines3 is not installed: pip install stable-baselines3 (keep torch)")
    else:
        for n_envs in (1, params.num_envs):
            seconds, updates = run_sb3(history, windows, params, n_envs)
            rows.append((f"stable-baselines3 {n_envs} env(s), x{k}", seconds * k, updates, k))
            print(f"  stable-baselines3 {n_envs} env(s), one agent: {seconds:.1f} s")
    base = rows[0][1]
    print(f"\n{'learner':<40}{'agents':>7}{'updates/agent':>15}{'seconds':>9}{'vs batched':>11}")
    for name, seconds, updates, agents in rows:
        print(f"{name:<40}{agents:>7}{updates:>15}{seconds:9.1f}{seconds / base:10.2f}x")
    print(f"one variant alone: {single:.1f} s; batched K={k}: {base / single:.2f} single agents")
    print(f"batched 5 seeds x K: {rows[1][1] / single:.2f} single agents for {5 * k} agents")


if __name__ == "__main__":
    main()
