"""The per-coin trading environment: vectorised for our learner, and as a ``gymnasium.Env``.

Both step over one :class:`CoinTensors`, the states of every bar of a coin precomputed once by
:mod:`strategies.agents.observation`, so a step is indexing. An agent decides at the close of
bar ``t`` and holds its decision over the next interval, earning the return from ``close_t`` to
``close_{t+1}``; then the state is that of bar ``t + 1``. Decisions are allowed for
``t in [first, last)`` of a :class:`DecisionRange`; an episode is cut (truncated, not terminated:
the learner still bootstraps) after ``episode_length`` steps or when it reaches ``last``, and
restarts at a random bar with a random position.

Rewards (MSPM), with ``y = close_{t+1} / close_t``, fee rate ``c`` and ``reward_scale`` ``s``:

* EAM, action ``a`` in {0 sell, 1 hold, 2 buy}, signal ``a - 1``:
  ``r = s * (a - 1) * (y - 1)``, the action-signed next-interval return;
* SAM, action ``a`` in {0 all cash, 1 all coin}, coin weight held before the decision ``p``:
  ``r = s * (a * ln(y) + |a - p| * ln(1 - c))``, the log return of the cash/coin portfolio net
  of the transaction cost ``c * |a - p|`` charged on the traded share at every change.
  (All-or-nothing weights do not drift within an interval, so no other cost arises.)

``c`` is the real trading cost (``[broker].fee_rate`` plus its slippage, see
:attr:`config.schema.BrokerConfig.trading_cost`). An optional ``turnover_penalty`` ``k`` adds
``|a - p| * ln(1 - k)`` to the SAM's training reward only: a hysteresis the agent learns (it
changes position only for a move worth more than ``c + k``); scores always use ``c`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from strategies.agents.observation import with_position

AgentKind = Literal["eam", "sam"]


def eam_reward(simple_return: Any, action: Any) -> Any:
    """Action-signed next-interval return ``(a - 1) * (y - 1)`` (numpy or torch, unscaled)."""
    return (action - 1) * simple_return


def sam_reward(log_return: Any, action: Any, position: Any, log_keep: float) -> Any:
    """Net log return ``a * ln(y) + |a - p| * ln(1 - c)``; ``log_keep = ln(1 - c)``."""
    return action * log_return + abs(action - position) * log_keep


@dataclass(frozen=True)
class CoinTensors:
    """Precomputed arrays of one coin over ``T`` bars.

    ``states``: ``(T, C, 2, n)`` float32 data channels of the state at each bar's close (for
    the SAM, the EAM signal channel included; the position channel is added at step time).
    ``log_returns[t] = ln(close_{t+1} / close_t)`` and ``simple_returns[t] = y - 1`` (float64;
    0 at the last bar). ``close_time``: ``(T,)`` int64 epoch ms of each bar's close.
    """

    states: torch.Tensor
    log_returns: torch.Tensor
    simple_returns: torch.Tensor
    close_time: np.ndarray

    @classmethod
    def from_arrays(
        cls, states: np.ndarray, close: np.ndarray, close_time: np.ndarray
    ) -> CoinTensors:
        """Build from states and closing prices of the same bars."""
        close = np.asarray(close, dtype=np.float64)
        log_returns = np.zeros(len(close))
        log_returns[:-1] = np.log(close[1:] / close[:-1])
        simple = np.zeros(len(close))
        simple[:-1] = close[1:] / close[:-1] - 1.0
        return cls(
            torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)),
            torch.from_numpy(log_returns),
            torch.from_numpy(simple),
            np.asarray(close_time, dtype=np.int64),
        )

    def with_states(self, states: np.ndarray) -> CoinTensors:
        """The same bars with other states (e.g. with the EAM signal channel stacked in)."""
        return CoinTensors(
            torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)),
            self.log_returns,
            self.simple_returns,
            self.close_time,
        )

    def __len__(self) -> int:
        return len(self.close_time)


@dataclass(frozen=True)
class DecisionRange:
    """Decisions at bars ``first <= t < last``; the transition of ``t`` ends at bar ``t + 1``."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.first < self.last:
            raise ValueError(f"empty decision range [{self.first}, {self.last})")

    def __len__(self) -> int:
        return self.last - self.first


@dataclass(frozen=True)
class Transition:
    """One vector step: per environment the bar, the coin weight held, the action, the scaled
    reward, the next bar and whether the episode terminated (never, on a price history)."""

    t: torch.Tensor
    position: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_t: torch.Tensor
    terminated: torch.Tensor


class VectorTradingEnv:
    """``num_envs`` environments over one coin, stepped as one batch of tensors.

    The state of environment ``i`` is the pair (bar ``t[i]``, coin weight held
    ``position[i]``); the observation is ``tensors.states[t[i]]`` plus, for the SAM, the
    position, which the Q-network takes apart (see :mod:`strategies.agents.networks`).
    """

    def __init__(
        self,
        tensors: CoinTensors,
        kind: AgentKind,
        decisions: DecisionRange,
        *,
        num_envs: int,
        episode_length: int,
        fee: float,
        reward_scale: float,
        generator: torch.Generator,
        turnover_penalty: float = 0.0,
    ) -> None:
        if decisions.last >= len(tensors):
            raise ValueError(f"decisions end at {decisions.last} but there are {len(tensors)} bars")
        self.kind, self.decisions = kind, decisions
        self.num_envs, self.episode_length = num_envs, episode_length
        self.log_returns = tensors.log_returns.float()
        self.simple_returns = tensors.simple_returns.float()
        self.log_keep = math.log1p(-fee) + math.log1p(-turnover_penalty)
        self.reward_scale = reward_scale
        self.generator = generator
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.position = torch.zeros(num_envs)
        self.steps = torch.zeros(num_envs, dtype=torch.long)
        self._restart(torch.ones(num_envs, dtype=torch.bool))

    def _restart(self, mask: torch.Tensor) -> None:
        count = int(mask.sum())
        if count == 0:
            return
        first, last = self.decisions.first, self.decisions.last
        self.t[mask] = torch.randint(first, last, (count,), generator=self.generator)
        if self.kind == "sam":
            self.position[mask] = torch.randint(0, 2, (count,), generator=self.generator).float()
        self.steps[mask] = 0

    def step(self, action: torch.Tensor) -> Transition:
        """Apply ``action`` ``(num_envs,)`` and return the transitions; cut episodes restart."""
        t, position = self.t.clone(), self.position.clone()
        if self.kind == "eam":
            reward = eam_reward(self.simple_returns[t], action.float())
        else:
            reward = sam_reward(self.log_returns[t], action.float(), position, self.log_keep)
            self.position = action.float()
        next_t = t + 1
        self.t = next_t.clone()
        self.steps += 1
        self._restart((self.steps >= self.episode_length) | (self.t >= self.decisions.last))
        return Transition(
            t, position, action, reward * self.reward_scale, next_t, torch.zeros(self.num_envs)
        )


class CryptoModuleEnv(gym.Env):
    """One environment of :class:`VectorTradingEnv` as a ``gymnasium.Env``, for reference
    libraries (stable-baselines3): same states, rewards, episodes and restarts.

    Observations: ``(C, 2, n)`` float32, for the SAM with the position channel last.
    Actions: ``Discrete(3)`` for the EAM, ``Discrete(2)`` for the SAM.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's API)

    def __init__(
        self,
        tensors: CoinTensors,
        kind: AgentKind,
        decisions: DecisionRange,
        *,
        episode_length: int,
        fee: float,
        reward_scale: float,
        turnover_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind, self.decisions, self.episode_length = kind, decisions, episode_length
        self.states = tensors.states.numpy()
        self.log_returns = tensors.log_returns.numpy().astype(np.float32)
        self.simple_returns = tensors.simple_returns.numpy().astype(np.float32)
        self.log_keep = math.log1p(-fee) + math.log1p(-turnover_penalty)
        self.reward_scale = reward_scale
        channels, rows, window = self.states.shape[1:]
        shape = (channels + (1 if kind == "sam" else 0), rows, window)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.action_space = gym.spaces.Discrete(3 if kind == "eam" else 2)
        self.t, self.position, self.steps = decisions.first, 0.0, 0

    def _observation(self) -> np.ndarray:
        state = self.states[self.t]
        return with_position(state, self.position) if self.kind == "sam" else state.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start at a random bar of the decision range, with a random position (SAM)."""
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(self.decisions.first, self.decisions.last))
        self.position = float(self.np_random.integers(0, 2)) if self.kind == "sam" else 0.0
        self.steps = 0
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Hold ``action`` over the next interval; returns the state at the next bar's close."""
        a = int(action)
        if self.kind == "eam":
            reward = eam_reward(float(self.simple_returns[self.t]), a)
        else:
            reward = sam_reward(float(self.log_returns[self.t]), a, self.position, self.log_keep)
            self.position = float(a)
        self.t += 1
        self.steps += 1
        truncated = self.steps >= self.episode_length or self.t >= self.decisions.last
        return self._observation(), float(reward * self.reward_scale), False, truncated, {}


def portfolio_log_returns(
    log_returns: np.ndarray, actions: np.ndarray, fee: float, initial_position: float = 0.0
) -> np.ndarray:
    """Per-step net log returns of the cash/coin portfolio that holds ``actions[i]`` (coin
    weight 0 or 1) over interval ``i``, starting from ``initial_position`` (unscaled)."""
    actions = np.asarray(actions, dtype=np.float64)
    held = np.concatenate(([initial_position], actions[:-1]))
    return sam_reward(np.asarray(log_returns, dtype=np.float64), actions, held, math.log1p(-fee))


def greedy_sam_rollout(q_by_position: np.ndarray, initial_position: int = 0) -> np.ndarray:
    """Greedy SAM actions over consecutive bars, carrying the position from step to step.

    ``q_by_position``: ``(steps, 2, 2)``, Q-values at each bar for position held 0 and 1.
    """
    actions = np.empty(len(q_by_position), dtype=np.int64)
    position = initial_position
    for i, q in enumerate(q_by_position):
        position = int(np.argmax(q[position]))
        actions[i] = position
    return actions
