"""A stack of SAM-like Q-networks with safety critics, trained and run as one batched network.

``M`` members (the learned variants of a coin, times the seeds trained together) share nothing
but their input: every parameter has a leading member dimension, and every layer is one batched
matrix product over the members (convolutions written as im2col + ``matmul``). The members are
therefore independent networks, computed together: the loss is the sum of per-member losses, so a
member's gradients never depend on another's (a test checks this), and gradient clipping is per
member. On a CPU a small network's update is dominated by per-call overheads, not arithmetic, so
``M`` members cost far less than ``M`` networks (``tests/benchmarks/bench_mars_training.py``).

Each member is the SAM of :class:`~strategies.agents.networks.SamQNetwork` (conv1 and conv2 of
kernel 3 over time, conv3 spanning the rest of the window, each asset row read with the same
weights; the weights held stacked in; conv4 mixing the rows; a linear head to Q(all cash),
Q(all coin)) plus a **safety critic**: a small head on the position-free body that estimates the
probability that holding the coin costs more than the ensemble's drawdown limit over its horizon
(:mod:`strategies.mars.labels`).

Rows are given time-major, ``(..., n, C)``: the coin row of a state ``(C, 2, n)`` is
``state[:, 1].T``. The cash row of every state this project builds is all zeros, so its body
output is one constant per member: :meth:`VariantStack.features` computes it once (pass
``cash=None``) instead of once per sample, half the arithmetic, with the same bits.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    """PyTorch's default initialisation of a layer with ``fan_in`` inputs."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def _im2col3(x: torch.Tensor) -> torch.Tensor:
    """Windows of 3 consecutive time steps, ``(..., L, C) -> (..., L - 2, 3 * C)``."""
    return torch.cat((x[..., :-2, :], x[..., 1:-1, :], x[..., 2:, :]), dim=-1)


class VariantStack(nn.Module):
    """``members`` independent SAM-like Q-networks with safety heads, computed together.

    ``in_channels``: data channels ``C`` of a state; ``window``: its length ``n``;
    ``channels``: ``(c1, c2, c3)`` as the SAM's; ``safety_hidden``: width of the safety head.
    """

    def __init__(
        self,
        members: int,
        in_channels: int,
        window: int,
        channels: tuple[int, int, int] = (16, 32, 32),
        safety_hidden: int = 16,
    ) -> None:
        super().__init__()
        if window < 5:
            raise ValueError(f"window must be at least 5 intervals, got {window}")
        c1, c2, c3 = channels
        m, c, n = members, in_channels, window
        self.members, self.in_channels, self.window = m, c, n
        self.channels, self.safety_hidden = (c1, c2, c3), safety_hidden
        self.w1, self.b1 = _uniform(m, 3 * c, c1, fan_in=3 * c), _uniform(m, 1, c1, fan_in=3 * c)
        self.w2, self.b2 = _uniform(m, 3 * c1, c1, fan_in=3 * c1), _uniform(m, 1, c1, fan_in=3 * c1)
        span = c1 * (n - 4)
        self.w3, self.b3 = _uniform(m, span, c2, fan_in=span), _uniform(m, 1, c2, fan_in=span)
        mix = 2 * (c2 + 1)
        self.w4, self.b4 = _uniform(m, mix, c3, fan_in=mix), _uniform(m, 1, c3, fan_in=mix)
        self.wq, self.bq = _uniform(m, c3, 2, fan_in=c3), _uniform(m, 1, 2, fan_in=c3)
        self.ws1 = _uniform(m, 2 * c2, safety_hidden, fan_in=2 * c2)
        self.bs1 = _uniform(m, 1, safety_hidden, fan_in=2 * c2)
        self.ws2 = _uniform(m, safety_hidden, 1, fan_in=safety_hidden)
        self.bs2 = _uniform(m, 1, 1, fan_in=safety_hidden)

    def args(self) -> dict[str, object]:
        """The constructor's arguments (saved with the weights)."""
        return {
            "members": self.members,
            "in_channels": self.in_channels,
            "window": self.window,
            "channels": list(self.channels),
            "safety_hidden": self.safety_hidden,
        }

    # -- body ------------------------------------------------------------------------------------

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Body output ``(M, R, c2)`` of asset rows ``(M, R, n, C)`` (each member its own)."""
        m, r, n, _ = rows.shape
        c1 = self.channels[0]
        h = torch.matmul(_im2col3(rows).reshape(m, r * (n - 2), -1), self.w1)
        h = F.relu(h + self.b1).view(m, r, n - 2, c1)
        h = torch.matmul(_im2col3(h).reshape(m, r * (n - 4), -1), self.w2)
        h = F.relu(h + self.b2).view(m, r, (n - 4) * c1)
        return F.relu(torch.baddbmm(self.b3, h, self.w3))

    def features(self, coin: torch.Tensor, cash: torch.Tensor | None = None) -> torch.Tensor:
        """Body output ``(M, B, 2, c2)`` (row 0 cash, row 1 coin) of coin rows ``(M, B, n, C)``
        and cash rows of the same shape, or ``None`` for all-zero cash rows (computed once)."""
        m, b = coin.shape[:2]
        if cash is None:
            zero = coin.new_zeros(m, 1, *coin.shape[2:])
            both = self.rows(torch.cat((zero, coin), dim=1))
            cash_out = both[:, :1].expand(m, b, -1)
            return torch.stack((cash_out, both[:, 1:]), dim=2)
        both = self.rows(torch.cat((cash, coin), dim=1))
        return torch.stack((both[:, :b], both[:, b:]), dim=2)

    # -- heads -----------------------------------------------------------------------------------

    def q_values(self, features: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Q-values ``(M, B, 2)`` from body features and the coin weight held ``(M, B)``."""
        weights = torch.stack((1.0 - position, position), dim=-1).unsqueeze(-1)
        stacked = torch.cat((features, weights.to(features.dtype)), dim=-1).flatten(2)
        hidden = F.relu(torch.baddbmm(self.b4, stacked, self.w4))
        return torch.baddbmm(self.bq, hidden, self.wq)

    def safety_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(M, B)`` of the probability that holding the coin breaches the drawdown
        limit within the horizon (independent of the position held)."""
        hidden = F.relu(torch.baddbmm(self.bs1, features.flatten(2), self.ws1))
        return torch.baddbmm(self.bs2, hidden, self.ws2).squeeze(-1)

    # -- members ---------------------------------------------------------------------------------

    def select(self, members: list[int]) -> VariantStack:
        """A new stack holding copies of the given members (e.g. one seed's variants)."""
        out = VariantStack(
            len(members), self.in_channels, self.window, self.channels, self.safety_hidden
        )
        index = torch.as_tensor(members, dtype=torch.long)
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                getattr(out, name).copy_(parameter[index])
        return out


def clip_grad_norm_per_member(stack: VariantStack, max_norm: float) -> torch.Tensor:
    """Scale each member's gradients to a global L2 norm of at most ``max_norm`` (what
    ``clip_grad_norm_`` does for one network, member by member); returns the norms ``(M,)``."""
    grads = [p.grad for p in stack.parameters() if p.grad is not None]
    squares = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms
