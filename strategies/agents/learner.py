"""Deep Q-learning (Mnih et al., 2015) over precomputed states: the pieces train.py assembles.

* :func:`seed_everything`: every source of randomness seeded in one place, deterministic kernels.
* :class:`ReplayBuffer`: transitions stored as bar indices and positions, not as states (a
  state is ``states[t]`` plus the position), so storing and sampling move a few numbers.
* :func:`linear_schedule`: the epsilon schedule.
* :class:`DQN`: online and target networks, epsilon-greedy acting, and the update: Huber loss
  between ``Q(s, a)`` and ``r + gamma * max_a' Q_target(s', a')`` (or, with ``double``, the
  target network's value of the online network's choice, ``Q_target(s', argmax_a' Q(s', a'))``:
  double DQN), gradients clipped to a global norm, Adam. The target network is frozen between
  copies, so its body is run once over every bar at each copy and its Q-values are read from
  that cache: the same targets as running it on each sampled next state, for a fraction of the
  work.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from strategies.agents.env import Transition


def seed_everything(seed: int, threads: int = 1) -> torch.Generator:
    """Seed Python, numpy and torch, make torch deterministic, and return the generator that
    every random draw of training (env restarts, exploration, replay sampling) takes from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` steps, then ``end``."""
    slope = (end - start) / max(duration, 1)
    return max(slope * step + start, end) if end <= start else min(slope * step + start, end)


@dataclass(frozen=True)
class Batch:
    """Sampled transitions (see :class:`~strategies.agents.env.Transition`)."""

    t: torch.Tensor
    position: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_t: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """A ring buffer of transitions ``(t, position, action, reward, next_t, terminated)``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.t = torch.zeros(capacity, dtype=torch.long)
        self.position = torch.zeros(capacity)
        self.action = torch.zeros(capacity, dtype=torch.long)
        self.reward = torch.zeros(capacity)
        self.next_t = torch.zeros(capacity, dtype=torch.long)
        self.terminated = torch.zeros(capacity)
        self.size = 0
        self._cursor = 0

    def add(self, step: Transition) -> None:
        """Store the transitions of one vector step."""
        n = len(step.t)
        index = (self._cursor + torch.arange(n)) % self.capacity
        self.t[index] = step.t
        self.position[index] = step.position
        self.action[index] = step.action
        self.reward[index] = step.reward
        self.next_t[index] = step.next_t
        self.terminated[index] = step.terminated
        self._cursor = (self._cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        index = torch.randint(0, self.size, (batch_size,), generator=generator)
        return Batch(
            self.t[index],
            self.position[index],
            self.action[index],
            self.reward[index],
            self.next_t[index],
            self.terminated[index],
        )


class DQN:
    """A DQN agent over the states ``(T, C, 2, n)`` of one coin.

    ``q_network`` must offer ``features(states)`` and ``q_values(features, position)`` (see
    :mod:`strategies.agents.networks`).
    """

    def __init__(
        self,
        q_network: nn.Module,
        states: torch.Tensor,
        *,
        gamma: float,
        learning_rate: float,
        huber_delta: float,
        max_grad_norm: float,
        double: bool = False,
    ) -> None:
        self.q_network = q_network
        self.double = double
        self.target_network = copy.deepcopy(q_network).requires_grad_(False)
        self.states = states
        self.gamma, self.huber_delta, self.max_grad_norm = gamma, huber_delta, max_grad_norm
        self.optimizer = torch.optim.Adam(q_network.parameters(), lr=learning_rate, fused=True)
        self.n_actions = q_network.head.out_features
        self._target_features: torch.Tensor | None = None
        self.sync_target()

    def sync_target(self) -> None:
        """Copy the online weights into the target network and refresh its body cache."""
        self.target_network.load_state_dict(self.q_network.state_dict())
        if self.gamma > 0:
            with torch.no_grad():
                self._target_features = self.target_network.features(self.states)

    @torch.no_grad()
    def q_values(self, t: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Online Q-values ``(len(t), n_actions)`` at bars ``t`` with coin weights ``position``."""
        return self.q_network.q_values(self.q_network.features(self.states[t]), position)

    @torch.no_grad()
    def act(
        self, t: torch.Tensor, position: torch.Tensor, epsilon: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Epsilon-greedy actions: random with probability ``epsilon``, else greedy."""
        greedy = self.q_values(t, position).argmax(dim=1)
        explore = torch.rand(len(t), generator=generator) < epsilon
        random_actions = torch.randint(0, self.n_actions, (len(t),), generator=generator)
        return torch.where(explore, random_actions, greedy)

    def update(self, batch: Batch) -> float:
        """One gradient step on ``batch``; returns the Huber loss before the step."""
        target = batch.reward
        if self.gamma > 0:
            assert self._target_features is not None
            with torch.no_grad():
                # The next position is the action just taken (all-or-nothing weights).
                next_position = batch.action.float()
                next_q = self.target_network.q_values(
                    self._target_features[batch.next_t], next_position
                )
                if self.double:  # the online network chooses, the target network values
                    online = self.q_network.q_values(
                        self.q_network.features(self.states[batch.next_t]), next_position
                    )
                    value = next_q.gather(1, online.argmax(dim=1, keepdim=True)).squeeze(1)
                else:
                    value = next_q.max(dim=1).values
                target = target + self.gamma * (1.0 - batch.terminated) * value
        q = self.q_network.q_values(self.q_network.features(self.states[batch.t]), batch.position)
        q_taken = q.gather(1, batch.action.unsqueeze(1)).squeeze(1)
        loss = nn.functional.huber_loss(q_taken, target, delta=self.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_network.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return float(loss.detach())
