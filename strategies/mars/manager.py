"""The manager: the portfolio's gross exposure (risk appetite) over the tactical ensembles.

``g = floor + (1 - floor) * sigmoid(c + v z)`` in ``[floor, 1]``, from the market-wide regime
features ``z`` (:data:`strategies.mars.regime.MARKET_FEATURES`: the coins' mean volatility,
drawdown, trend and momentum, and the breadth), standardised on the fit's data. Every coin's
target weight is ``g`` times what the controllers give it (``e_i / m``); the risk gate, outside
every network, still has the last word on what is sent.

Fitted like the controller (:mod:`strategies.mars.controller`), on realised returns net of
fees: a record of past instants with the market features, each coin's tactical sleeve ``s_i``
(its exposure under the current controller, over ``m``) and the coins' next-bar log returns,
maximising ``J = [mean(g) - risk_aversion * mean(min(g, 0)^2)] / mean(P^2)`` of the scaled
portfolio's net log returns ``ln(1 + G P - c sum_i |G s_i - G' s_i'|)`` (``P`` the tactical
portfolio's return, the primes the previous instant's), with a ridge penalty pulling it to
``initial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from config.schema import MarsManagerConfig
from strategies.mars.controller import Standardiser, logit, objective
from strategies.mars.regime import MARKET_FEATURES
from strategies.module_outputs import infer_on_one_thread


@dataclass(frozen=True)
class PortfolioRecord:
    """Rows of a manager fit: ``z (N, 5)`` market features, ``sleeves (N, m)`` the tactical
    weights ``e_i / m``, ``rho (N, m)`` the coins' next-bar log returns (NaN: unknown, the row is
    dropped), ``segment (N,)`` runs of consecutive instants."""

    z: np.ndarray
    sleeves: np.ndarray
    rho: np.ndarray
    segment: np.ndarray


class Manager:
    """Gross exposure from market features; ``initial`` until fitted."""

    def __init__(self, cfg: MarsManagerConfig) -> None:
        self.cfg = cfg
        self.prior = logit((cfg.initial - cfg.floor) / (1.0 - cfg.floor))
        self.standardiser = Standardiser(
            np.zeros(len(MARKET_FEATURES)), np.ones(len(MARKET_FEATURES))
        )
        self.v = np.zeros(len(MARKET_FEATURES))
        self.c = self.prior
        self.fitted_rows = 0

    def exposure(self, z: np.ndarray) -> float:
        """Gross exposure in ``[floor, 1]`` for the market features ``z``."""
        s = float(self.standardiser.apply(z) @ self.v + self.c)
        return self.cfg.floor + (1.0 - self.cfg.floor) / (1.0 + np.exp(-s))

    def fit(self, record: PortfolioRecord, cost: float) -> dict[str, Any]:
        """Refit on ``record``; returns a summary (on one torch thread, as the controller's)."""
        infer_on_one_thread()
        keep = np.isfinite(record.rho).all(axis=1)
        if keep.sum() < 2:
            return {"rows": int(keep.sum()), "fitted": False}
        cfg = self.cfg
        z_np, sleeves = record.z[keep], record.sleeves[keep]
        self.standardiser = Standardiser.fit(z_np)
        z = torch.from_numpy(self.standardiser.apply(z_np))
        s = torch.from_numpy(sleeves.astype(np.float64))
        move = torch.from_numpy(np.expm1(record.rho[keep]))
        seg = torch.from_numpy(record.segment[keep])
        tactical = (s * move).sum(dim=1)
        scale = float(tactical.pow(2).mean()) or 1.0
        v = torch.zeros(len(MARKET_FEATURES), dtype=torch.float64, requires_grad=True)
        c = torch.tensor(self.prior, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.Adam((v, c), lr=cfg.learning_rate)
        same = (seg[1:] == seg[:-1]).unsqueeze(1)

        def value() -> torch.Tensor:
            g = cfg.floor + (1.0 - cfg.floor) * torch.sigmoid(c + z @ v)
            weights = g.unsqueeze(1) * s
            trades = torch.zeros_like(weights)
            trades[1:] = torch.where(same, (weights[1:] - weights[:-1]).abs(), 0.0)
            net = g * tactical - cost * trades.sum(dim=1)
            return objective(net, scale, cfg.risk_aversion)

        with torch.no_grad():
            start = float(value())
        for _ in range(cfg.steps):
            loss = -value() + cfg.l2 * (v.pow(2).sum() + (c - self.prior).pow(2))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        self.v, self.c = v.detach().numpy().copy(), float(c.detach())
        self.fitted_rows = int(keep.sum())
        with torch.no_grad():
            end = float(value())
        return {"rows": self.fitted_rows, "fitted": True, "objective": [start, end]}
