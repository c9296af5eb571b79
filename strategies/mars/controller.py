"""The meta-adaptive controller: how much each variant of a coin counts, given the regime.

Weights ``alpha = softmax(b + W z)`` over the ``K`` variants, where ``z`` are the regime
features (:mod:`strategies.mars.regime` plus the coin's first DRU components) standardised on
the fit's data. The coin's exposure is the blend of its variants' positions,
``e = sum_k alpha_k a_k`` in ``[0, 1]``.

**What it is fitted on: realised returns net of fees, never the agents' own estimates.** MARS's
reference controller maximises a Sharpe-like ratio of the weighted Q-values its critics predict,
i.e. it rewards what the agents believe, not what happened. Here a fit reads a *record*: for each
coin and bar ``t`` of the past, the regime features known at ``t``, the position every variant
took at ``t``, and the coin's log return from ``t`` to ``t + 1`` that followed; it maximises

    ``J = [mean(g) - risk_aversion * mean(min(g, 0)^2)] / mean(rho^2)``

with ``g_t = ln(1 + e_t (exp(rho_t) - 1) - c |e_t - e_{t-1}|)`` the blend's net log return at
the real trading cost ``c`` (turnover of the blend included), divided by the coin's mean squared
bar return so that ``J`` is in the same units for a quiet and a wild coin; a ridge penalty
``l2 (|W|^2 + |b|^2)`` pulls it towards the uniform mix when the record says little. The record
only holds bars the variants never trained on (see :mod:`strategies.mars.policy`), so a variant
that merely memorised its training window earns nothing from it. Fits are deterministic (full
batch Adam from zero) and take a fraction of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from config.schema import MarsControllerConfig
from strategies.module_outputs import infer_on_one_thread


@dataclass(frozen=True)
class Record:
    """Rows of a fit: ``x (N, d)`` regime features, ``actions (N, K)`` the variants' positions,
    ``rho (N,)`` the coin's next-bar log returns, ``segment (N,)`` ids of runs of consecutive
    bars of one coin (turnover is counted within a run only)."""

    x: np.ndarray
    actions: np.ndarray
    rho: np.ndarray
    segment: np.ndarray

    def __len__(self) -> int:
        return len(self.rho)


@dataclass(frozen=True)
class Standardiser:
    """Mean and scale of features, fitted on a record (NaN read as the mean)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        """From the rows of ``x`` (columns without data get mean 0, scale 1)."""
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
            scale = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)
        scale = np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0)
        return cls(mean, scale)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardised ``x`` (NaN -> 0, clipped to +-5)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.clip(np.nan_to_num(z, nan=0.0), -5.0, 5.0)


def blend_turnover(exposure: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """``|e_t - e_{t-1}|`` within runs (0 at the first bar of a run)."""
    change = torch.zeros_like(exposure)
    same = segment[1:] == segment[:-1]
    change[1:] = torch.where(same, (exposure[1:] - exposure[:-1]).abs(), 0.0)
    return change


def objective(net_simple: torch.Tensor, scale: float, risk_aversion: float) -> torch.Tensor:
    """``[mean(g) - risk_aversion * mean(min(g, 0)^2)] / scale`` of net simple returns."""
    g = torch.log1p(net_simple.clamp(min=-0.99))
    return (g.mean() - risk_aversion * torch.clamp(g, max=0.0).pow(2).mean()) / scale


class Controller:
    """Softmax weights over ``names`` from regime features; uniform until fitted."""

    def __init__(self, names: tuple[str, ...], width: int) -> None:
        self.names, self.width = tuple(names), width
        self.standardiser = Standardiser(np.zeros(width), np.ones(width))
        self.w = np.zeros((len(names), width))
        self.b = np.zeros(len(names))
        self.fitted_rows = 0

    def weights(self, x: np.ndarray) -> np.ndarray:
        """``alpha (K,)`` for one row of features, or ``(N, K)`` for rows."""
        z = self.standardiser.apply(x)
        logits = z @ self.w.T + self.b
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    def fit(self, record: Record, cost: float, cfg: MarsControllerConfig) -> dict[str, Any]:
        """Refit on ``record`` (see the module docstring); returns a summary of the fit.

        The tensors are small: torch runs the fit on one thread (3.6-5x faster than two on a
        loaded 2-core machine, and the same bits)."""
        infer_on_one_thread()
        keep = np.isfinite(record.rho)
        if keep.sum() < 2:
            return {"rows": int(keep.sum()), "fitted": False}
        x, actions = record.x[keep], record.actions[keep].astype(np.float64)
        rho, segment = record.rho[keep], record.segment[keep]
        self.standardiser = Standardiser.fit(x)
        z = torch.from_numpy(self.standardiser.apply(x))
        a = torch.from_numpy(actions)
        move = torch.from_numpy(np.expm1(rho))
        seg = torch.from_numpy(segment)
        scale = float(np.mean(rho**2)) or 1.0
        w = torch.zeros(len(self.names), self.width, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(self.names), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.Adam((w, b), lr=cfg.learning_rate)

        def value() -> torch.Tensor:
            alpha = torch.softmax(b + z @ w.T, dim=1)
            exposure = (alpha * a).sum(dim=1)
            net = exposure * move - cost * blend_turnover(exposure, seg)
            return objective(net, scale, cfg.risk_aversion)

        with torch.no_grad():
            start = float(value())
        for _ in range(cfg.steps):
            loss = -value() + cfg.l2 * (w.pow(2).sum() + b.pow(2).sum())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        self.w, self.b = w.detach().numpy().copy(), b.detach().numpy().copy()
        self.fitted_rows = int(keep.sum())
        with torch.no_grad():
            end = float(value())
        return {"rows": self.fitted_rows, "fitted": True, "objective": [start, end]}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (for journals and reports)."""
        return {
            "names": list(self.names),
            "w": self.w.tolist(),
            "b": self.b.tolist(),
            "mean": self.standardiser.mean.tolist(),
            "scale": self.standardiser.scale.tolist(),
            "rows": self.fitted_rows,
        }


def logit(p: float) -> float:
    """``log(p / (1 - p))``."""
    return math.log(p / (1.0 - p))
