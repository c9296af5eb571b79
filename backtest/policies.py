"""The policies an experiment can run, by name: a small registry of policy builders.

A :class:`PolicyBuilder` says whether its policy needs Crypto Modules trained at every refit
(``trains``) and builds the engine policy of one seed from a :class:`PolicyContext` (the coins,
the config, the walk-forward folds and, when it trains, each fold's registry folders per coin).
``cryptorlpm`` (the paper's CM vote, modules swapped at each refit as the Agent Updating Unit
does live), ``mars`` and ``mars+manager`` (MARS ensembles per coin, :mod:`strategies.mars`)
train; the baselines do not. New policies (e.g. risk-profiled ensembles) register a
builder with :func:`register_policy` and become available to ``experiment walkforward --policy``.

Baseline names: ``bh_<COIN>`` (buy & hold of one coin), ``equal_weight`` (1/N rebalanced),
``equal_weight_bh`` (1/N bought and held) and ``trend_filter``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.engine import DecisionContext, Policy
from bot.timeframes import DAY_MS
from config.schema import AppConfig
from strategies.baselines import (
    TREND_FILTER,
    BuyAndHold,
    EqualWeightBuyAndHold,
    EqualWeightRebalanced,
    TrendFilter,
)
from strategies.crypto_module import CryptoModule
from strategies.mars.artifact import load_ensemble
from strategies.mars.module import MarsModule
from strategies.mars.policy import MARS, MARS_MANAGER, MarsPolicy, ModuleSet
from strategies.plans import ReplayHistory
from strategies.portfolio import VOTE_SOURCE, Module, PortfolioVote
from strategies.seed_bag import SeedBag


@dataclass(frozen=True)
class FoldSpan:
    """Where one fold trades: decisions closing in ``[start_ms, end_ms)``."""

    index: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class PolicyContext:
    """What a builder gets: the config, the portfolio's coins, the seed (None for a policy that
    does not train), the folds, and per fold the trained modules' folders (coin -> folder);
    for a run of seed bags, per fold every bag member's folder (coin -> folders, ``seed``
    being the bag's first seed)."""

    cfg: AppConfig
    coins: tuple[str, ...]
    seed: int | None = None
    folds: tuple[FoldSpan, ...] = ()
    models: Mapping[int, Mapping[str, Path]] = field(default_factory=dict)
    bags: Mapping[int, Mapping[str, tuple[Path, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyBuilder:
    """A named policy: ``build(context)`` returns a fresh engine policy for one run."""

    name: str
    trains: bool
    build: Callable[[PolicyContext], Policy]
    description: str = ""
    trainer: str = "cm"
    """What a policy that trains needs at every refit: ``"cm"`` (one Crypto Module per coin and
    seed) or ``"mars"`` (one MARS ensemble per coin and seed, the seeds trained together)."""
    bags: bool = False
    """Whether ``build`` takes seed bags (:attr:`PolicyContext.bags`)."""


_REGISTRY: dict[str, PolicyBuilder] = {}


def register_policy(builder: PolicyBuilder) -> None:
    """Make ``builder`` available by its name (a name can be registered once)."""
    if builder.name in _REGISTRY:
        raise ValueError(f"policy {builder.name!r} is already registered")
    _REGISTRY[builder.name] = builder


def policy_names() -> list[str]:
    """Registered names (``bh_<COIN>`` is resolved for any coin)."""
    return sorted(_REGISTRY)


def policy_builder(name: str) -> PolicyBuilder:
    """The builder of ``name``; ``ValueError`` naming the known ones when there is none."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("bh_") and len(name) > 3:
        coin = name[3:]
        return PolicyBuilder(name, False, lambda ctx: BuyAndHold(coin), f"buy & hold {coin}")
    raise ValueError(f"unknown policy {name!r}; expected one of {[*policy_names(), 'bh_<COIN>']}")


def baseline_names(coins: Sequence[str]) -> list[str]:
    """Every baseline of a portfolio, in table order."""
    return [*(f"bh_{c}" for c in coins), "equal_weight", "equal_weight_bh", TREND_FILTER]


# --- the paper's vote, walked forward -----------------------------------------------------------


class FoldSwitchingVote:
    """The CM vote whose modules are replaced at every refit, as the Agent Updating Unit does.

    Holds one :class:`PortfolioVote` per fold. Each fold's modules read the bars and metrics of
    the ``warmup_ms`` before their fold and of the fold itself (so they are warm when it starts,
    like a module warmed up on ``[live].warmup_days`` of history before a hot swap); at a
    decision, the vote of the fold that contains it decides, and only that fold's module
    decisions are published.
    """

    name = VOTE_SOURCE

    def __init__(
        self,
        quote: str,
        folds: Sequence[tuple[FoldSpan, PortfolioVote]],
        warmup_ms: int | None = None,
    ) -> None:
        self.quote = quote
        self.folds = sorted(folds, key=lambda item: item[0].start_ms)
        self.warmup_ms = warmup_ms

    def prepare(self, replay: ReplayHistory) -> int:
        """Before a replay: each fold's modules compute their decisions at the bars they will
        read (those of the ``warmup_ms`` before their fold and of the fold) in a few batched
        passes (:meth:`PortfolioVote.prepare`); returns how many modules did."""
        prepared = 0
        for span, vote in self.folds:
            after = None if self.warmup_ms is None else span.start_ms - self.warmup_ms
            prepared += vote.prepare(replay, after=after, before=span.end_ms)
        return prepared

    def _reads(self, span: FoldSpan, ts: int) -> bool:
        """Whether the fold's modules read an event stamped ``ts``."""
        if ts >= span.end_ms:
            return False
        return self.warmup_ms is None or ts > span.start_ms - self.warmup_ms

    def _active(self, ts: int) -> PortfolioVote | None:
        for span, vote in self.folds:
            if span.start_ms <= ts < span.end_ms:
                return vote
        return None

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        """Feed every fold's modules that still have a fold to trade (the active fold's with
        the positions the account holds, the others warming up); note the active fold's
        decisions; answer its vote (all cash outside every fold)."""
        instant = context.instant
        active = self._active(instant.ts)
        for span, vote in self.folds:
            read = [m for m in instant.metrics if self._reads(span, m.ts)]
            if read:
                vote.on_metrics(read)
        positions = active.held_positions(context.account) if active is not None else None
        for bar in instant.bars:
            for span, vote in self.folds:
                if not self._reads(span, bar.ts):
                    continue
                decisions = vote.on_bar(bar, positions if vote is active else None)
                if vote is active:
                    for decision in decisions:
                        context.note(decision)
        if not context.deciding:
            return None
        return active.vote_weights() if active is not None else {self.quote: 1.0}


def build_cryptorlpm(ctx: PolicyContext) -> FoldSwitchingVote:
    """The paper's vote over each fold's modules (one per coin, this context's seed; or, for
    a run of seed bags, one :class:`~strategies.seed_bag.SeedBag` per coin)."""
    quote, market = ctx.cfg.market.quote, ctx.cfg.market
    folds = []
    for span in ctx.folds:
        modules: list[Module]
        if ctx.bags:
            bags = ctx.bags[span.index]
            modules = [
                SeedBag([CryptoModule.load(f, market.symbol(c)) for f in bags[c]])
                for c in ctx.coins
            ]
        else:
            folders = ctx.models[span.index]
            modules = [CryptoModule.load(folders[c], market.symbol(c)) for c in ctx.coins]
        folds.append((span, PortfolioVote(quote, modules)))
    return FoldSwitchingVote(quote, folds, ctx.cfg.live.warmup_days * DAY_MS)


# --- MARS ensembles, walked forward -------------------------------------------------------------


def build_mars(ctx: PolicyContext, *, manager: bool = False) -> MarsPolicy:
    """Each fold's MARS ensembles (one per coin, this context's seed) under the meta-controller
    (and the manager), swapped at every refit like :class:`FoldSwitchingVote`'s modules."""
    cfg = ctx.cfg
    sets = []
    for span in ctx.folds:
        folders = ctx.models[span.index]
        modules = {
            c: MarsModule(load_ensemble(folders[c]), cfg.market.symbol(c), cfg.baselines.trend_days)
            for c in ctx.coins
        }
        sets.append(ModuleSet(span.start_ms, span.end_ms, modules))
    return MarsPolicy(
        cfg.market.quote,
        ctx.coins,
        sets,
        cfg.mars,
        timeframe=cfg.market.timeframe,
        trend_days=cfg.baselines.trend_days,
        cost=cfg.broker.trading_cost,
        warmup_ms=cfg.live.warmup_days * DAY_MS,
        manager=manager,
    )


def _trend(ctx: PolicyContext) -> TrendFilter:
    cfg = ctx.cfg
    return TrendFilter(ctx.coins, cfg.market.timeframe, cfg.baselines.trend_days)


register_policy(
    PolicyBuilder("cryptorlpm", True, build_cryptorlpm, "the paper's Crypto Module vote", bags=True)
)
register_policy(
    PolicyBuilder(
        MARS,
        True,
        build_mars,
        "risk-profiled variants per coin weighted by a meta-controller",
        trainer="mars",
    )
)
register_policy(
    PolicyBuilder(
        MARS_MANAGER,
        True,
        lambda ctx: build_mars(ctx, manager=True),
        "MARS ensembles under a manager that sets the gross exposure",
        trainer="mars",
    )
)
register_policy(
    PolicyBuilder(
        "equal_weight",
        False,
        lambda ctx: EqualWeightRebalanced(ctx.coins),
        "1/N rebalanced at every decision",
    )
)
register_policy(
    PolicyBuilder(
        "equal_weight_bh",
        False,
        lambda ctx: EqualWeightBuyAndHold(ctx.coins),
        "1/N bought at the first decision and held",
    )
)
register_policy(
    PolicyBuilder(TREND_FILTER, False, _trend, "each coin while above its N-day mean, else cash")
)
