"""What training one Crypto Module produces: each agent's kept checkpoint and the module's
artifact contents. Shared by :mod:`strategies.agents.train` (which makes them) and
:mod:`strategies.registry` (which saves and loads them), so neither imports the other's
internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from strategies.agents.observation import FeatureSchema
from strategies.agents.params import CryptoModuleParams
from strategies.features import FeatureSpec


@dataclass
class AgentResult:
    """The kept checkpoint of one agent and how training went."""

    state_dict: dict[str, torch.Tensor]
    best_validation: float
    best_env_steps: int
    env_steps: int
    updates: int
    seconds: float


@dataclass(frozen=True)
class TrainedCryptoModule:
    """Everything a trained module's artifact holds (see :mod:`strategies.registry`)."""

    coin: str
    seed: int
    params: CryptoModuleParams
    schema: FeatureSchema
    feature_spec: FeatureSpec | None
    eam: AgentResult | None
    sam: AgentResult
    network_args: dict[str, dict[str, Any]]
    scores: dict[str, dict[str, float]]
    data_ranges: dict[str, list[int]]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    cost: float | None = None
    """The trading cost rate training charged (``[broker]`` fee plus slippage)."""
