"""The DQN pieces: replay buffer, epsilon schedule, target cache, networks, the update."""

from __future__ import annotations

import copy

import pytest
import torch

from strategies.agents.env import Transition
from strategies.agents.learner import DQN, ReplayBuffer, linear_schedule, seed_everything
from strategies.agents.networks import EamQNetwork, SamQNetwork


def _transition(t0: int, n: int) -> Transition:
    t = torch.arange(t0, t0 + n)
    return Transition(t, t % 2 * 1.0, t % 2, t * 0.5, t + 1, torch.zeros(n))


def test_replay_buffer_is_a_ring_and_samples_stored_transitions():
    buffer = ReplayBuffer(10)
    buffer.add(_transition(0, 6))
    buffer.add(_transition(6, 6))
    assert buffer.size == 10
    assert sorted(buffer.t.tolist()) == list(range(2, 12))  # 0 and 1 were overwritten
    batch = buffer.sample(50, torch.Generator().manual_seed(0))
    assert torch.equal(batch.next_t, batch.t + 1)
    assert torch.equal(batch.reward, batch.t * 0.5)
    assert int(batch.t.min()) >= 2


def test_linear_schedule_decays_then_stays():
    assert linear_schedule(1.0, 0.1, 10, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 10, 5) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 10, 50) == 0.1


def test_sam_forward_equals_body_then_head_with_the_position_channel():
    torch.manual_seed(0)
    net = SamQNetwork(3, 8, (4, 6, 5))
    obs = torch.randn(7, 4, 2, 8)
    position = torch.tensor([0, 1, 0, 1, 1, 0, 0], dtype=torch.float32)
    obs[:, -1, 0, :] = (1 - position)[:, None]
    obs[:, -1, 1, :] = position[:, None]
    expected = net.q_values(net.features(obs[:, :-1]), position)
    torch.testing.assert_close(net(obs), expected)
    assert net(obs).shape == (7, 2)
    eam = EamQNetwork(3, 8, channels=4, hidden=5)
    assert eam(obs[:, :-1]).shape == (7, 3)


def test_target_cache_gives_the_same_targets_as_running_the_target_network():
    seed_everything(0)
    states = torch.randn(30, 3, 2, 8)
    learner = DQN(
        SamQNetwork(3, 8, (4, 6, 5)),
        states,
        gamma=0.9,
        learning_rate=1e-2,
        huber_delta=1.0,
        max_grad_norm=10.0,
    )
    buffer = ReplayBuffer(100)
    buffer.add(_transition(0, 29))
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        learner.update(buffer.sample(16, generator))  # online moves, target stays
    batch = buffer.sample(16, generator)
    cached = learner.target_network.q_values(
        learner._target_features[batch.next_t], batch.action.float()
    )
    direct = learner.target_network(
        torch.cat(
            (
                states[batch.next_t],
                torch.stack((1 - batch.action.float(), batch.action.float()), 1)[
                    :, None, :, None
                ].expand(-1, 1, 2, 8),
            ),
            dim=1,
        )
    )
    torch.testing.assert_close(cached, direct)
    assert not torch.equal(
        learner.q_values(batch.next_t, batch.action.float()),
        learner.target_network.q_values(
            learner._target_features[batch.next_t], batch.action.float()
        ),
    )


def test_updates_fit_a_bandit_and_clip_gradients():
    seed_everything(1)
    states = torch.randn(64, 2, 2, 8)
    # Reward +1 for buy when feature 0's latest coin value is positive, else -1.
    good = (states[:, 0, 1, -1] > 0).long() * 2
    learner = DQN(
        EamQNetwork(2, 8, channels=8, hidden=16),
        states,
        gamma=0.0,
        learning_rate=1e-2,
        huber_delta=1.0,
        max_grad_norm=0.5,
    )
    before = copy.deepcopy(learner.q_network.state_dict())
    buffer = ReplayBuffer(1000)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        t = torch.randint(0, 64, (64,), generator=generator)
        action = torch.randint(0, 3, (64,), generator=generator)
        reward = torch.where(action == good[t], 1.0, -1.0)
        buffer.add(Transition(t, torch.zeros(64), action, reward, t, torch.zeros(64)))
    losses = [learner.update(buffer.sample(64, generator)) for _ in range(300)]
    assert sum(losses[-20:]) < sum(losses[:20])
    greedy = learner.q_values(torch.arange(64), torch.zeros(64)).argmax(1)
    assert (greedy == good).float().mean() > 0.9
    assert any(not torch.equal(before[k], v) for k, v in learner.q_network.state_dict().items())


def test_double_dqn_values_the_online_choice_with_the_target_network():
    seed_everything(2)
    states = torch.randn(30, 3, 2, 8)
    kwargs = {"gamma": 0.9, "learning_rate": 1e-2, "huber_delta": 1e9, "max_grad_norm": 1e9}
    plain = DQN(SamQNetwork(3, 8, (4, 6, 5)), states, **kwargs)
    double = DQN(copy.deepcopy(plain.q_network), states, double=True, **kwargs)
    buffer = ReplayBuffer(100)
    buffer.add(_transition(0, 29))
    generator = torch.Generator().manual_seed(0)
    for learner in (plain, double):  # move both online networks away from their targets
        for _ in range(5):
            learner.update(buffer.sample(16, torch.Generator().manual_seed(1)))
    batch = buffer.sample(16, generator)
    next_position = batch.action.float()
    target_q = double.target_network.q_values(double._target_features[batch.next_t], next_position)
    online_q = double.q_values(batch.next_t, next_position)
    choice = online_q.argmax(1, keepdim=True)
    expected = batch.reward + 0.9 * target_q.gather(1, choice).squeeze(1)
    # With Huber's delta huge, the loss is half the squared error to the target: recover the
    # target from the loss of a network whose Q-values we know.
    q = double.q_network.q_values(double.q_network.features(states[batch.t]), batch.position)
    taken = q.gather(1, batch.action.unsqueeze(1)).squeeze(1).detach()
    loss = double.update(batch)
    assert loss == pytest.approx(float(0.5 * ((taken - expected) ** 2).mean()), rel=1e-5)
    assert (target_q.gather(1, choice).squeeze(1) <= target_q.max(1).values).all()


def test_the_sams_last_convolution_runs_as_a_linear_layer_with_the_same_result():
    torch.manual_seed(3)
    net = SamQNetwork(3, 9, (4, 6, 5))
    data = torch.randn(11, 3, 2, 9)
    per_row = data.transpose(1, 2).reshape(22, 3, 9)
    as_convolution = net.body(per_row).view(11, 2, -1)  # the Sequential, conv3 a Conv1d
    torch.testing.assert_close(net.features(data), as_convolution)
    assert set(net.state_dict()) >= {"body.4.weight", "body.4.bias"}  # artifacts still load
