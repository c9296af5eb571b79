"""Training a coin's learned MARS variants (and several seeds) as one batched network.

Read top to bottom, like :mod:`strategies.agents.train`:

1. One state per bar (the SAM's state without an EAM channel), built once; the coin rows of the
   bars, time-major, for the :class:`~strategies.mars.network.VariantStack`.
2. The safety labels (:mod:`strategies.mars.labels`) of the training decisions, from the closes
   inside the training window only.
3. ``M = seeds x variants`` members, each with its own environments (bar, position), replay
   buffer, exploration and checkpoint; the draws of a seed's members come from that seed's
   generator, and its members are initialised from that seed.
4. DQN per member, all members in one batched update: the reward of variant ``k``

       ``r = a ln y + |a - p| (ln(1 - c) + ln(1 - kappa)) - lambda_k a max(-ln y, 0)``

   (the net log return at the real trading cost ``c``, a learned turnover cost ``kappa``, and the
   variant's loss aversion ``lambda_k``); the target masks the coin action where the target
   network's safety critic exceeds the variant's threshold (double DQN optional); the safety
   critic learns the labels by binary cross-entropy beside the Huber loss; gradients clipped per
   member.
5. Checkpoints: each member's greedy, safety-masked policy is scored on validation (net log
   return at the real cost, from cash) and its best *trained* checkpoint is kept: a network
   scored before its first gradient update is never kept.

Nothing at or after the training window's last bar reaches the updates: states, rewards and
labels come from bars ``<= train.last`` (validation bars are only scored).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bot.timeframes import timeframe_ms
from config.schema import CryptoModuleParams, MarsConfig
from strategies.agents.env import DecisionRange
from strategies.agents.learner import linear_schedule, seed_everything
from strategies.agents.observation import CASH_ROW, COIN_ROW, FeatureSchema, build_observations
from strategies.agents.train import CoinHistory, TrainingLog, Windows, decision_range
from strategies.features import FeatureSpec
from strategies.mars.labels import forward_drawdown_labels, horizon_bars
from strategies.mars.network import VariantStack, clip_grad_norm_per_member


@dataclass(frozen=True)
class TrainedEnsemble:
    """One seed's trained variants of one coin: what a MARS artifact holds."""

    coin: str
    seed: int
    params: CryptoModuleParams
    mars: MarsConfig
    schema: FeatureSchema
    feature_spec: FeatureSpec | None
    network: VariantStack
    scores: dict[str, dict[str, float]]
    data_ranges: dict[str, list[int]]
    cost: float
    seconds: float
    training_run: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def time_major_rows(states: np.ndarray, row: int) -> torch.Tensor:
    """Asset row ``row`` of states ``(T, C, 2, n)`` as ``(T, n, C)`` float32, contiguous."""
    return torch.from_numpy(np.ascontiguousarray(states[:, :, row, :].transpose(0, 2, 1)))


@torch.no_grad()
def greedy_masked_rollout(
    q_cash: torch.Tensor, q_coin: torch.Tensor, unsafe: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """Greedy actions ``(M, V)`` over consecutive bars, carrying each member's position.

    ``q_cash``/``q_coin``: ``(M, V, 2)`` Q-values with cash / the coin held; ``unsafe``:
    ``(M, V)`` bool, the coin is masked there."""
    members, steps = unsafe.shape
    actions = torch.empty(members, steps, dtype=torch.long)
    position = torch.full((members,), start, dtype=torch.long)
    rows = torch.arange(members)
    for i in range(steps):
        q = torch.where(position[:, None] == 1, q_coin[:, i], q_cash[:, i])
        choice = q.argmax(dim=1)
        position = torch.where(unsafe[rows, i], torch.zeros_like(choice), choice)
        actions[:, i] = position
    return actions


def net_log_returns(log_returns: torch.Tensor, actions: torch.Tensor, cost: float) -> torch.Tensor:
    """Per-step net log returns ``(M, V)`` of holding ``actions`` ``(M, V)`` from cash."""
    held = torch.cat((torch.zeros_like(actions[:, :1]), actions[:, :-1]), dim=1)
    a = actions.to(log_returns.dtype)
    return a * log_returns + (actions != held).to(log_returns.dtype) * math.log1p(-cost)


class _Members:
    """Per-member constants and per-seed generators of one training run."""

    def __init__(self, mars: MarsConfig, seeds: list[int]) -> None:
        variants = mars.variants
        self.k, self.seeds = len(variants), list(seeds)
        self.m = self.k * len(seeds)
        self.threshold = torch.tensor([v.threshold for _ in seeds for v in variants])
        self.penalty = torch.tensor([v.penalty for _ in seeds for v in variants])
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def randint(self, low: int, high: int, per_member: int) -> torch.Tensor:
        """``(M, per_member)`` integers; a seed's members draw from that seed's generator."""
        parts = [
            torch.randint(low, high, (self.k, per_member), generator=g) for g in self.generators
        ]
        return torch.cat(parts)

    def slices(self) -> list[tuple[slice, torch.Generator]]:
        """Each seed's rows of the members and its generator."""
        return [(slice(i * self.k, (i + 1) * self.k), g) for i, g in enumerate(self.generators)]

    def rand(self, per_member: int) -> torch.Tensor:
        """``(M, per_member)`` uniforms in [0, 1), drawn per seed."""
        return torch.cat([torch.rand(self.k, per_member, generator=g) for g in self.generators])


def _init_stack(members: _Members, channels: int, window: int, widths) -> VariantStack:
    """A stack whose members of seed ``s`` are initialised from ``torch.manual_seed(s)``."""
    stack = VariantStack(members.m, channels, window, widths)
    with torch.no_grad():
        for i, seed in enumerate(members.seeds):
            torch.manual_seed(seed)
            part = VariantStack(members.k, channels, window, widths)
            for name, parameter in stack.named_parameters():
                parameter[i * members.k : (i + 1) * members.k] = getattr(part, name)
    return stack


def train_ensembles(
    history: CoinHistory,
    windows: Windows,
    params: CryptoModuleParams,
    mars: MarsConfig,
    seeds: list[int] | tuple[int, ...],
    *,
    cost: float,
    log: TrainingLog | None = None,
) -> list[TrainedEnsemble]:
    """Train the learned variants of ``mars`` for every seed of ``seeds`` as one batched
    network; one :class:`TrainedEnsemble` per seed (in ``seeds`` order)."""
    started = time.perf_counter()
    seeds = list(seeds)
    seed_everything(seeds[0], params.torch_threads)
    log = log or TrainingLog(None)
    agent = params.sam
    members = _Members(mars, seeds)

    # 1. States, decision ranges, rows.
    states = build_observations(history.ohlcv, history.features, history.ready, params.window)
    close = history.ohlcv[:, 3].astype(np.float64)
    close_time = history.close_time
    train = decision_range(close_time, windows.train, params.window)
    validation = decision_range(close_time, windows.validation, params.window)
    lo, hi = train.first, train.last  # training reads bars lo .. hi (hi: the window's last)
    coin_rows = time_major_rows(states, COIN_ROW)
    cash_constant = not np.any(states[:, :, CASH_ROW, :])
    cash_rows = None if cash_constant else time_major_rows(states, CASH_ROW)
    log_returns = torch.zeros(len(close), dtype=torch.float32)
    log_returns[:-1] = torch.from_numpy(np.log(close[1:] / close[:-1])).float()
    reward_returns = log_returns.clone()
    reward_returns[hi:] = 0.0  # rewards of training decisions never reach past bar hi

    # 2. Safety labels from the training window's closes only.
    horizon = horizon_bars(mars.horizon_days, timeframe_ms(history.timeframe))
    labels_np, known_np = forward_drawdown_labels(close, horizon, mars.drawdown, hi)
    labels, known = torch.from_numpy(labels_np), torch.from_numpy(known_np)

    # 3. Members, network, optimiser.
    widths = tuple(agent.channels)
    channels = states.shape[1]
    online = _init_stack(members, channels, params.window, widths)
    target = VariantStack(members.m, channels, params.window, widths).requires_grad_(False)
    optimiser = torch.optim.Adam(online.parameters(), lr=agent.learning_rate, fused=True)
    m, e = members.m, params.num_envs
    member_rows = torch.arange(m)[:, None]

    def rows_at(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return coin_rows[t], None if cash_rows is None else cash_rows[t]

    cache: dict[str, torch.Tensor] = {}

    def sync_target() -> None:
        target.load_state_dict(online.state_dict())
        if agent.gamma > 0:
            with torch.no_grad():
                span = torch.arange(lo, hi + 1).expand(m, -1)
                features = target.features(*rows_at(span))
                cache["features"] = features
                cache["unsafe"] = torch.sigmoid(target.safety_logits(features)) > _threshold(
                    members
                )

    sync_target()

    # Environments and replay buffers, one set per member.
    env_t = torch.zeros(m, e, dtype=torch.long)
    env_position = torch.zeros(m, e)
    env_steps = torch.zeros(m, e, dtype=torch.long)

    def restart(mask: torch.Tensor) -> None:
        for rows, generator in members.slices():
            part = mask[rows]
            if not part.any():  # a seed draws only for its own restarts (its run is its own)
                continue
            new_t = torch.randint(lo, hi, part.shape, generator=generator)
            new_position = torch.randint(0, 2, part.shape, generator=generator).float()
            env_t[rows][part], env_position[rows][part] = new_t[part], new_position[part]
            env_steps[rows][part] = 0

    restart(torch.ones(m, e, dtype=torch.bool))
    capacity = agent.buffer_size
    buf_t = torch.zeros(m, capacity, dtype=torch.long)
    buf_position = torch.zeros(m, capacity)
    buf_action = torch.zeros(m, capacity, dtype=torch.long)
    buf_reward = torch.zeros(m, capacity)
    size, cursor = 0, 0
    log_keep = math.log1p(-cost) + math.log1p(-mars.turnover_penalty)
    threshold = _threshold(members)

    # Validation inputs (scored only).
    val = torch.arange(validation.first, validation.last).expand(m, -1)
    val_returns = log_returns[validation.first : validation.last].expand(m, -1).double()

    best = {name: p.detach().clone() for name, p in online.named_parameters()}
    best_score = torch.full((m,), -math.inf, dtype=torch.float64)
    best_step = torch.zeros(m, dtype=torch.long)
    vector_steps = max(agent.total_env_steps // e, 1)
    exploration_steps = int(agent.exploration_fraction * vector_steps)
    updates, loss_value = 0, float("nan")
    for step in range(1, vector_steps + 1):
        # Act: epsilon-greedy with the coin masked where the safety critic says so.
        epsilon = linear_schedule(agent.epsilon_start, agent.epsilon_end, exploration_steps, step)
        with torch.no_grad():
            features = online.features(*rows_at(env_t))
            q = online.q_values(features, env_position)
            unsafe = torch.sigmoid(online.safety_logits(features)) > threshold
            q[..., 1] = torch.where(unsafe, -math.inf, q[..., 1])
            greedy = q.argmax(dim=-1)
        explore = members.rand(e) < epsilon
        action = torch.where(explore, members.randint(0, 2, e), greedy)
        rho = reward_returns[env_t]
        a = action.float()
        reward = (
            a * rho
            + (a - env_position).abs() * log_keep
            - members.penalty[:, None] * a * torch.relu(-rho)
        ) * params.reward_scale
        index = (cursor + torch.arange(e)) % capacity
        buf_t[:, index], buf_position[:, index] = env_t, env_position
        buf_action[:, index], buf_reward[:, index] = action, reward
        cursor, size = (cursor + e) % capacity, min(size + e, capacity)
        env_position = a
        env_t = env_t + 1
        env_steps += 1
        restart((env_steps >= params.episode_length) | (env_t >= hi))

        # Learn: one batched update of every member.
        if step * e > agent.learning_starts:
            for _ in range(agent.updates_per_step):
                pick = members.randint(0, size, agent.batch_size)
                batch_t = buf_t[member_rows, pick]
                batch_action = buf_action[member_rows, pick]
                loss = _loss(
                    online,
                    target,
                    cache,
                    rows_at,
                    batch_t,
                    buf_position[member_rows, pick],
                    batch_action,
                    buf_reward[member_rows, pick],
                    labels[batch_t],
                    known[batch_t],
                    lo=lo,
                    gamma=agent.gamma,
                    huber_delta=agent.huber_delta,
                    safety_weight=mars.safety_weight,
                    threshold=threshold,
                    double=mars.double_dqn,
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                clip_grad_norm_per_member(online, agent.max_grad_norm)
                optimiser.step()
                loss_value = float(loss.detach()) / m
                updates += 1
                if updates % agent.target_update_interval == 0:
                    sync_target()

        # Score every member on validation; keep each one's best trained checkpoint.
        if step % agent.eval_interval == 0 or step == vector_steps:
            scores = _validation_scores(online, rows_at, val, val_returns, threshold, cost)
            if updates > 0:
                better = scores > best_score
                with torch.no_grad():
                    for name, parameter in online.named_parameters():
                        best[name][better] = parameter[better]
                best_score = torch.where(better, scores, best_score)
                best_step = torch.where(better, torch.tensor(step * e), best_step)
            log.write(
                agent="mars",
                env_steps=step * e,
                updates=updates,
                epsilon=round(epsilon, 4),
                loss=None if math.isnan(loss_value) else loss_value,
                validation=[round(float(s), 6) for s in scores],
                best_validation=[round(float(s), 6) for s in best_score],
                elapsed_s=round(time.perf_counter() - started, 3),
            )

    if not torch.isfinite(best_score).all():  # a budget too small to ever update: keep the end
        final = _validation_scores(online, rows_at, val, val_returns, threshold, cost)
        missing = ~torch.isfinite(best_score)
        with torch.no_grad():
            for name, parameter in online.named_parameters():
                best[name][missing] = parameter[missing]
        best_score = torch.where(missing, final, best_score)
        best_step = torch.where(missing, torch.tensor(vector_steps * e), best_step)
    with torch.no_grad():
        for name, parameter in online.named_parameters():
            parameter.copy_(best[name])
    seconds = time.perf_counter() - started
    return _per_seed(
        history, windows, params, mars, members, online, best_score, best_step, cost, seconds,
        train=train, validation=validation, updates=updates, vector_steps=vector_steps,
        log=log, val_returns=val_returns,
    )  # fmt: skip


def _threshold(members: _Members) -> torch.Tensor:
    return members.threshold[:, None]


def _loss(
    online: VariantStack,
    target: VariantStack,
    cache: dict[str, torch.Tensor],
    rows_at,
    t: torch.Tensor,
    position: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    label: torch.Tensor,
    known: torch.Tensor,
    *,
    lo: int,
    gamma: float,
    huber_delta: float,
    safety_weight: float,
    threshold: torch.Tensor,
    double: bool,
) -> torch.Tensor:
    """Sum over members of (Huber TD loss + weight x safety BCE), each a mean over its batch."""
    m = t.shape[0]
    member_rows = torch.arange(m)[:, None]
    target_value = reward
    if gamma > 0:
        with torch.no_grad():
            next_t = t + 1
            next_position = action.float()
            features = cache["features"][member_rows, next_t - lo]
            next_q = target.q_values(features, next_position)
            unsafe = cache["unsafe"][member_rows, next_t - lo]
            next_q[..., 1] = torch.where(unsafe, -math.inf, next_q[..., 1])
            if double:
                online_features = online.features(*rows_at(next_t))
                online_q = online.q_values(online_features, next_position)
                online_unsafe = torch.sigmoid(online.safety_logits(online_features)) > threshold
                online_q[..., 1] = torch.where(online_unsafe, -math.inf, online_q[..., 1])
                choice = online_q.argmax(dim=-1, keepdim=True)
                value = next_q.gather(-1, choice).squeeze(-1)
                value = torch.where(torch.isfinite(value), value, next_q[..., 0])
            else:
                value = next_q.max(dim=-1).values
            target_value = reward + gamma * value
    features = online.features(*rows_at(t))
    q = online.q_values(features, position)
    q_taken = q.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    td = F.huber_loss(q_taken, target_value, delta=huber_delta, reduction="none").mean(dim=1)
    logits = online.safety_logits(features)
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    weight = known.float()
    safety = (bce * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
    return (td + safety_weight * safety).sum()


@torch.no_grad()
def _validation_scores(
    network: VariantStack,
    rows_at,
    val: torch.Tensor,
    val_returns: torch.Tensor,
    threshold: torch.Tensor,
    cost: float,
) -> torch.Tensor:
    """Each member's net log return ``(M,)`` on validation: greedy, safety-masked, from cash."""
    features = network.features(*rows_at(val))
    zeros = torch.zeros(val.shape)
    q_cash, q_coin = network.q_values(features, zeros), network.q_values(features, zeros + 1.0)
    unsafe = torch.sigmoid(network.safety_logits(features)) > threshold
    actions = greedy_masked_rollout(q_cash, q_coin, unsafe)
    return net_log_returns(val_returns, actions, cost).sum(dim=1)


def _per_seed(
    history: CoinHistory,
    windows: Windows,
    params: CryptoModuleParams,
    mars: MarsConfig,
    members: _Members,
    online: VariantStack,
    best_score: torch.Tensor,
    best_step: torch.Tensor,
    cost: float,
    seconds: float,
    *,
    train: DecisionRange,
    validation: DecisionRange,
    updates: int,
    vector_steps: int,
    log: TrainingLog,
    val_returns: torch.Tensor,
) -> list[TrainedEnsemble]:
    close_time = history.close_time
    schema = FeatureSchema(
        metric_features=history.feature_names,
        window=params.window,
        timeframe=history.timeframe,
        eam_signal=False,
    )
    hold = float(net_log_returns(val_returns[:1], torch.ones_like(val_returns[:1]).long(), cost)
                 .sum())  # fmt: skip
    ranges = {
        "bars": [int(history.open_time[0]), int(close_time[-1])],
        "train": [int(close_time[train.first]), int(close_time[train.last])],
        "validation": [int(close_time[validation.first]), int(close_time[validation.last])],
    }
    out = []
    for i, seed in enumerate(members.seeds):
        own = list(range(i * members.k, (i + 1) * members.k))
        names = [v.name for v in mars.variants]
        out.append(
            TrainedEnsemble(
                coin=history.coin,
                seed=seed,
                params=params,
                mars=mars,
                schema=schema,
                feature_spec=history.feature_spec,
                network=online.select(own),
                scores={
                    "validation": {
                        **{n: float(best_score[j]) for n, j in zip(names, own, strict=True)},
                        "buy_and_hold": hold,
                    }
                },
                data_ranges=ranges,
                cost=cost,
                seconds=seconds / len(members.seeds),
                training_run={
                    "env_steps": vector_steps * params.num_envs,
                    "updates": updates,
                    "best_env_steps": {
                        n: int(best_step[j]) for n, j in zip(names, own, strict=True)
                    },
                    "seeds_trained_together": list(members.seeds),
                    "seconds_all_seeds": round(seconds, 2),
                },
                extra={"log": log.rows},
            )
        )
    return out
