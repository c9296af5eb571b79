"""MARS outside backtests: training a coin's ensembles into the registry, and the ``mars`` /
``mars+manager`` policies of the live daemon (``[live].policy``).

The ensembles live under ``<[training].models_dir>/mars/<COIN>/<id>/``
(:mod:`strategies.mars.artifact`); ``[mars].models`` pins an id per coin, else a coin's newest
ensemble decides. The daemon runs one set of ensembles over all time; the controller (and the
manager) are fitted on the record the warm-up replays (the bars after the ensembles' training
window: their validation window and whatever came since), and refitted every
``[mars.controller].refit_days`` as the record grows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from config.schema import AppConfig
from strategies.mars.artifact import CARD, load_ensemble, newest_ensemble, save_ensemble
from strategies.mars.module import MarsModule
from strategies.mars.policy import ALWAYS, MARS_MANAGER, MarsPolicy, ModuleSet


class NoEnsemblesError(LookupError):
    """``[live].policy`` is ``mars`` or ``mars+manager`` but a configured coin has no ensemble
    (or ``[mars].models`` names one that is not there)."""


def mars_root(cfg: AppConfig) -> Path:
    """Where the MARS ensembles of the registry live."""
    return Path(cfg.training.models_dir) / "mars"


def train_mars(cfg: AppConfig, coin: str, seed: int | None = None) -> list[Path]:
    """``cryptorlpm train --mars``: train ``coin``'s ensembles on ``[windows]`` (one network
    for every seed of ``[training].seeds``, or ``seed``) and save each seed's into the
    registry; returns the folders."""
    from strategies.agents.train import Windows, read_history
    from strategies.mars.training import train_ensembles

    if coin not in cfg.market.coins:
        raise ValueError(f"coin {coin!r} is not in market.coins {list(cfg.market.coins)}")
    history = asyncio.run(read_history(cfg, coin))
    seeds = [seed] if seed is not None else list(cfg.training.seeds)
    trained = train_ensembles(
        history,
        Windows.from_config(cfg.windows),
        cfg.agents,
        cfg.mars,
        seeds,
        cost=cfg.broker.trading_cost,
    )
    return [save_ensemble(mars_root(cfg), one) for one in trained]


def ensemble_folders(cfg: AppConfig) -> dict[str, Path]:
    """Each configured coin's ensemble folder (``[mars].models``, else its newest).

    Raises :class:`NoEnsemblesError` naming the first coin without one and how to train it:
    unlike the vote, a MARS portfolio with a coin missing would size every sleeve wrongly."""
    root = mars_root(cfg)
    folders: dict[str, Path] = {}
    for coin in cfg.market.coins:
        wanted = cfg.mars.models.get(coin)
        if wanted is not None:
            folder = root / coin / wanted
            if not (folder / CARD).exists():
                raise NoEnsemblesError(
                    f"[mars].models.{coin} = {wanted!r}: no such ensemble under {root / coin}"
                )
        else:
            folder = newest_ensemble(root, coin)
            if folder is None:
                raise NoEnsemblesError(
                    f"[live].policy = {cfg.live.policy!r} needs a MARS ensemble for every coin, "
                    f"and {root} has none for {coin}: train them first (cryptorlpm train --coin "
                    f'{coin} --mars -c CONFIG), or set [live].policy = "vote", "equal_weight" '
                    'or "hold"'
                )
        folders[coin] = folder
    return folders


async def build_mars_live(
    cfg: AppConfig, market: Any, metrics: Any, now_ms: int
) -> tuple[MarsPolicy, None]:
    """The daemon's ``mars`` / ``mars+manager`` policy (the daemon warms it up on the stored
    history: :func:`bot.live.warmup.warm_up_policy`)."""
    del market, metrics, now_ms  # the daemon's warm-up feeds the history
    folders = ensemble_folders(cfg)
    trend_days = cfg.baselines.trend_days
    modules = {
        coin: MarsModule(load_ensemble(folder), cfg.market.symbol(coin), trend_days)
        for coin, folder in folders.items()
    }
    policy = MarsPolicy(
        cfg.market.quote,
        cfg.market.coins,
        [ModuleSet(*ALWAYS, modules)],
        cfg.mars,
        timeframe=cfg.market.timeframe,
        trend_days=trend_days,
        cost=cfg.broker.trading_cost,
        manager=cfg.live.policy == MARS_MANAGER,
    )
    return policy, None
