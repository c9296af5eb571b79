"""Q-networks of a Crypto Module: the EAM's 1-D CNN and the SAM's 4-layer CNN.

Both read observations of :mod:`strategies.agents.observation`: tensors of shape
``(batch, channels, 2, window)``, one channel per feature, asset row 0 = cash and row 1 = the
coin, and ``window`` intervals with the latest last.

Each network has a position-free *body* (:meth:`features`) and a small *head*
(:meth:`q_values`). The SAM's head is where the weights held enter, as in EIIE's
"portfolio-vector memory" (Jiang et al., 2017) that MSPM's SAM follows; the EAM ignores them (its
actions do not change what it sees next). ``forward`` takes a whole observation (for the SAM with
the position as its last channel), so a reference library can run the network as it is; our
learner calls ``features`` and ``q_values`` apart, which lets it run a frozen target network's
body once per distinct bar instead of once per sampled transition.
"""

from __future__ import annotations

import torch
from torch import nn

EAM_ACTIONS = ("sell", "hold", "buy")
"""EAM actions by index; the trading signal of action ``a`` is ``a - 1`` (-1, 0, +1)."""

SAM_ACTIONS = ("all_cash", "all_coin")
"""SAM actions by index; action ``a`` sets the portfolio weights ``[cash, coin] = [1 - a, a]``."""


def _check_window(window: int) -> None:
    if window < 5:
        raise ValueError(f"window must be at least 5 intervals, got {window}")


class EamQNetwork(nn.Module):
    """The EAM's Q-network: a 1-D CNN over time, then an MLP to Q(sell), Q(hold), Q(buy).

    Both asset rows of every feature are input channels (``2 * in_features``) of
    ``Conv1d(-> c, 3)``, ``Conv1d(c -> c, 3)``; then ``Linear(-> hidden)`` and
    ``Linear(hidden -> 3)``, ReLU between all.
    """

    def __init__(self, in_features: int, window: int, channels: int = 16, hidden: int = 64):
        super().__init__()
        _check_window(window)
        self.body = nn.Sequential(
            nn.Conv1d(2 * in_features, channels, 3),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * (window - 4), hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, len(EAM_ACTIONS))
        self.out_features = hidden

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Body output ``(batch, hidden)`` of observations ``(batch, F, 2, window)``."""
        return self.body(obs.flatten(1, 2))

    def q_values(
        self, features: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Q-values ``(batch, 3)`` from body features (``position`` is not used)."""
        return self.head(features)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values ``(batch, 3)`` of observations ``(batch, F, 2, window)``."""
        return self.q_values(self.features(obs))


class SamQNetwork(nn.Module):
    """The SAM's Q-network: four convolutions, then a linear layer to Q(all cash), Q(all coin).

    ``conv1`` and ``conv2`` (kernels 1x3) and ``conv3`` (kernel 1 x (window - 4), which spans
    what is left of the window) read each asset row's history on its own, with weights shared by
    the rows (EIIE's "identical independent evaluators"); they run as 1-D convolutions over the
    rows, which is the same computation and faster on a CPU. The weights held ``[1 - p, p]`` are
    then stacked as one more channel, and ``conv4`` (kernel 2x1) mixes the cash and coin rows;
    written as a linear map of the two stacked rows, which is what a 2x1 kernel over a 2x1 input
    computes. ``in_channels`` counts the data channels (features, plus the EAM signal when used).
    ``conv3``'s kernel spans its whole input, so it is a linear layer in disguise and runs as
    one (``F.linear`` on its weights, flattened: the same parameters and state dict, and faster
    than the convolution, most of all in the backward pass).
    """

    def __init__(
        self, in_channels: int, window: int, channels: tuple[int, int, int] = (16, 32, 32)
    ):
        super().__init__()
        _check_window(window)
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, c1, 3),
            nn.ReLU(),
            nn.Conv1d(c1, c1, 3),
            nn.ReLU(),
            nn.Conv1d(c1, c2, window - 4),
            nn.ReLU(),
        )
        self.conv4 = nn.Linear(2 * (c2 + 1), c3)
        self.head = nn.Linear(c3, len(SAM_ACTIONS))
        self.out_features = c3

    def features(self, data: torch.Tensor) -> torch.Tensor:
        """Body output ``(batch, 2, c2)`` of data channels ``(batch, in_channels, 2, window)``."""
        batch, channels, rows, window = data.shape
        per_row = data.transpose(1, 2).reshape(batch * rows, channels, window)
        conv3 = self.body[4]
        hidden = self.body[:4](per_row).flatten(1)
        out = nn.functional.linear(hidden, conv3.weight.flatten(1), conv3.bias)
        return torch.relu(out).view(batch, rows, -1)

    def hidden_features(self, features: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``conv4`` output ``(batch, c3)``: body features with the weights held stacked in."""
        weights = torch.stack((1.0 - position, position), dim=1).to(features.dtype)
        stacked = torch.cat((features, weights.unsqueeze(-1)), dim=2)
        return torch.relu(self.conv4(stacked.flatten(1)))

    def q_values(self, features: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Q-values ``(batch, 2)`` from body features and the coin weight held, ``position``."""
        return self.head(self.hidden_features(features, position))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values ``(batch, 2)`` of whole observations ``(batch, in_channels + 1, 2, window)``.

        The last channel is the position channel of
        :func:`strategies.agents.observation.with_position`.
        """
        data, position = split_position(obs)
        return self.q_values(self.features(data), position)


def split_position(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Data channels and coin weight held ``(batch,)`` of SAM observations."""
    return obs[:, :-1], obs[:, -1, 1, -1]


def build_eam(in_features: int, window: int, channels: int, hidden: int) -> EamQNetwork:
    """An EAM network (the registry rebuilds networks from these arguments)."""
    return EamQNetwork(in_features, window, channels, hidden)


def build_sam(in_channels: int, window: int, channels: tuple[int, int, int]) -> SamQNetwork:
    """A SAM network (the registry rebuilds networks from these arguments)."""
    return SamQNetwork(in_channels, window, tuple(channels))  # type: ignore[arg-type]
