"""The trading environment: MSPM rewards, costs on every change, vectorised == gymnasium."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from strategies.agents.env import (
    CoinTensors,
    CryptoModuleEnv,
    DecisionRange,
    VectorTradingEnv,
    greedy_sam_rollout,
    portfolio_log_returns,
)

FEE = 0.001


@pytest.fixture
def tensors() -> CoinTensors:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 50)))
    states = rng.normal(size=(50, 3, 2, 6)).astype(np.float32)
    return CoinTensors.from_arrays(states, close, np.arange(50) * 1000)


def _vector(tensors: CoinTensors, kind: str, **kwargs) -> VectorTradingEnv:
    options = {"num_envs": 4, "episode_length": 100, "fee": FEE, "reward_scale": 1.0}
    options.update(kwargs)
    return VectorTradingEnv(
        tensors, kind, DecisionRange(5, 40), generator=torch.Generator().manual_seed(0), **options
    )


def test_sam_reward_is_net_log_return_with_cost_on_every_change(tensors):
    env = _vector(tensors, "sam")
    env.t[:] = torch.tensor([10, 10, 10, 10])
    env.position[:] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    step = env.step(torch.tensor([0, 1, 0, 1]))
    y = float(tensors.log_returns[10])
    keep = math.log(1 - FEE)
    torch.testing.assert_close(step.reward, torch.tensor([0.0, y + keep, keep, y]))
    assert torch.equal(env.position, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.equal(step.next_t, torch.full((4,), 11))


def test_eam_reward_is_action_signed_next_return(tensors):
    env = _vector(tensors, "eam", reward_scale=100.0)
    env.t[:] = 12
    step = env.step(torch.tensor([0, 1, 2, 2]))
    r = float(tensors.simple_returns[12]) * 100
    torch.testing.assert_close(step.reward, torch.tensor([-r, 0.0, r, r]))


def test_episodes_are_cut_at_the_range_end_and_restart_inside_it(tensors):
    env = _vector(tensors, "sam", num_envs=64, episode_length=7)
    for _ in range(30):
        step = env.step(torch.randint(0, 2, (64,)))
        assert int(step.t.min()) >= 5 and int(step.t.max()) < 40
        assert int(step.next_t.max()) <= 40
        assert not step.terminated.any()
        assert int(env.t.min()) >= 5 and int(env.t.max()) < 40


@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")
def test_gymnasium_env_passes_the_checker_and_matches_the_vector_env(tensors):
    env = CryptoModuleEnv(
        tensors, "sam", DecisionRange(5, 40), episode_length=100, fee=FEE, reward_scale=1.0
    )
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape == (4, 2, 6)
    vector = _vector(tensors, "sam", num_envs=1)
    vector.t[:] = env.t
    vector.position[:] = env.position
    for action in [1, 1, 0, 1, 0, 0]:
        t = env.t
        obs, reward, terminated, truncated, _ = env.step(action)
        step = vector.step(torch.tensor([action]))
        assert int(step.t) == t and not terminated and not truncated
        assert reward == pytest.approx(float(step.reward), abs=1e-6)
        assert np.array_equal(obs[:-1], tensors.states[t + 1].numpy())
        assert obs[-1, 1, 0] == action  # the position channel holds the weight just chosen


def test_portfolio_returns_and_greedy_rollout():
    log_returns = np.array([0.1, -0.2, 0.05])
    net = portfolio_log_returns(log_returns, np.array([1, 0, 1]), FEE)
    keep = math.log(1 - FEE)
    np.testing.assert_allclose(net, [0.1 + keep, keep, 0.05 + keep])
    # Q by position: at bar 0 from cash prefer coin; at bar 1 from coin prefer coin.
    q = np.array([[[0, 1], [0, 1]], [[1, 0], [0, 1]], [[1, 0], [1, 0]]], dtype=float)
    assert greedy_sam_rollout(q).tolist() == [1, 1, 0]


def test_a_turnover_penalty_is_charged_on_changes_in_training_only(tensors):
    plain = _vector(tensors, "sam", num_envs=2)
    penalised = VectorTradingEnv(
        tensors,
        "sam",
        DecisionRange(5, 40),
        num_envs=2,
        episode_length=100,
        fee=FEE,
        reward_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        turnover_penalty=0.01,
    )
    for env in (plain, penalised):
        env.t[:] = 10
        env.position[:] = torch.tensor([0.0, 1.0])
    action = torch.tensor([1, 1])  # env 0 buys, env 1 keeps holding
    a, b = plain.step(action).reward, penalised.step(action).reward
    assert float(b[1]) == pytest.approx(float(a[1]))  # no change, no penalty
    assert float(b[0] - a[0]) == pytest.approx(math.log(1 - 0.01), rel=1e-5)
