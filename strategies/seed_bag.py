"""A seed bag: one coin's Crypto Modules trained with different seeds, deciding together.

A DQN's out-of-sample figures depend on its training seed about as much as on anything else:
in walk-forward on ``../shared/data`` the CM vote's ARR spread over 5 seeds by 64-118 points
(README, "Walk-forward with retraining"). Bagging is the textbook answer to a high-variance
learner: a :class:`SeedBag` holds ``B`` modules of one coin, one per seed, and decides the mean
of their positions, so the coin's weight pair is ``[1 - p, p]`` with ``p`` the members' mean
position, and the coin's sleeve is held in steps of ``1 / B``.

Each member's SAM reads its *own* last action as the position held (training's assumption;
MARS's variants do the same), not the account's: the account holds the bag's mean, a
fraction no member was trained on. So a refused or partial order is not seen by the members,
as it is by a single module in the vote.

Members are plain :class:`~strategies.crypto_module.CryptoModule` handlers and keep every
property of one: :meth:`SeedBag.prepare` prepares each for a replay (the same decisions as bar
by bar), metrics reach each one as they reach a module plugged alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bot.events import Bar, Metric, ModuleDecision
from strategies.crypto_module import CryptoModule


class SeedBag:
    """``B`` Crypto Modules of one coin (one per seed) voting their mean position; a module
    for :class:`~strategies.portfolio.PortfolioVote`."""

    def __init__(self, members: Sequence[CryptoModule]) -> None:
        if not members:
            raise ValueError("a seed bag needs at least one Crypto Module")
        first = members[0]
        for member in members[1:]:
            if (member.coin, member.symbol, member.timeframe) != (
                first.coin,
                first.symbol,
                first.timeframe,
            ):
                raise ValueError(
                    f"a seed bag's modules must share coin, symbol and timeframe: "
                    f"{member.model_id} reads {member.symbol} {member.timeframe}, "
                    f"{first.model_id} reads {first.symbol} {first.timeframe}"
                )
        self.members = tuple(members)
        self.symbol, self.timeframe = first.symbol, first.timeframe
        self._id = "+".join(member.model_id for member in self.members)

    @property
    def coin(self) -> str:
        """The coin the bag trades."""
        return self.members[0].coin

    @property
    def model_id(self) -> str:
        """The members' registry ids, joined by ``+``."""
        return self._id

    @property
    def metric_keys(self) -> frozenset[tuple[str, str]]:
        """The (asset, name) of the metrics any member reads."""
        return frozenset().union(*(member.metric_keys for member in self.members))

    @property
    def fresh(self) -> bool:
        """Whether no member has read anything yet."""
        return all(member.fresh for member in self.members)

    @property
    def position(self) -> float:
        """The members' mean position (0 all cash .. 1 all coin)."""
        return sum(member.position for member in self.members) / len(self.members)

    def decide(self, bar: Bar, position: float | None = None) -> ModuleDecision | None:
        """Every member's decision at the close of ``bar``, each at its own last action
        (``position``, what the account holds, is not read: module docstring); the bag's is
        their mean. None for a bar of another symbol or timeframe."""
        decided = [member.decide(bar) for member in self.members]
        if decided[0] is None:
            return None
        held = sum(d[4] for d in decided if d is not None) / len(decided)
        return ModuleDecision(bar[0], self._id, self.coin, 1.0 - held, held)

    def on_metric(self, metric: Metric) -> None:
        """Hand a metric to every member."""
        for member in self.members:
            member.on_metric(metric)

    def on_metrics(self, metrics: Sequence[Metric]) -> None:
        """Hand an instant's metrics to every member, in order."""
        for member in self.members:
            member.on_metrics(metrics)

    def prepare(
        self, timeframe: str, open_time: np.ndarray, ohlcv: np.ndarray, metrics: pd.DataFrame
    ) -> bool:
        """:meth:`CryptoModule.prepare` of every member (each computes its decisions ahead);
        whether all did."""
        done = [member.prepare(timeframe, open_time, ohlcv, metrics) for member in self.members]
        return all(done)
