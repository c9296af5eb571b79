"""Small synthetic data and a tiny training budget shared by the agent tests."""

from __future__ import annotations

from datetime import date

import pytest
import torch

from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.timeframes import to_ms
from config.schema import DateWindow, FeatureConfig, WindowsConfig
from strategies.agents.params import CryptoModuleParams, DQNParams
from strategies.agents.train import CoinHistory, Windows, refine_history
from strategies.crypto_module import CryptoModule

TINY_AGENT = DQNParams(
    total_env_steps=1_600,
    learning_starts=200,
    batch_size=32,
    buffer_size=2_000,
    target_update_interval=20,
    channels=(4, 4, 4),
    hidden=8,
    eval_interval=20,
)
TINY = CryptoModuleParams(
    window=8,
    num_envs=8,
    episode_length=32,
    eam=TINY_AGENT.model_copy(update={"gamma": 0.0}),
    sam=TINY_AGENT,
)
"""A budget that trains both agents in well under a second."""

COST = 0.0015
"""The trading cost the agent tests train against (the default ``[broker]``: a 0.1 % fee plus
5 bp of slippage)."""

TINY_WINDOWS = WindowsConfig(
    train=DateWindow(start=date(2021, 1, 1), end=date(2021, 6, 30)),
    validation=DateWindow(start=date(2021, 7, 1), end=date(2021, 8, 31)),
    test=DateWindow(start=date(2021, 9, 1), end=date(2021, 10, 31)),
)


@pytest.fixture(scope="session")
def market():
    """One synthetic coin (plus the market-wide series), 2020-07 .. 2021-11, hourly."""
    return generate_market(["ETH"], to_ms("2020-07-01"), to_ms("2021-11-01"), seed=11, scenarios=())


@pytest.fixture(scope="session")
def bars_6h(market):
    """ETH's 6h bars."""
    return resample_candles(market.candles["ETH"], "1h", "6h").frame


@pytest.fixture(scope="session")
def history(market, bars_6h) -> CoinHistory:
    """ETH's bars and DRU features, the DRU fitted on the tiny training window."""
    return refine_history(
        "ETH",
        bars_6h,
        market.metrics,
        "6h",
        FeatureConfig(),
        Windows.from_config(TINY_WINDOWS).train,
        market_wide_assets=["MARKET"],
    )


@pytest.fixture(scope="session")
def windows() -> Windows:
    """The tiny train / validation / test windows."""
    return Windows.from_config(TINY_WINDOWS)


@torch.no_grad()
def jolted(module: CryptoModule, seed: int, scale: float = 2.0) -> CryptoModule:
    """``module`` with seeded random weights and no biases: tiny trained modules hold one
    position throughout (nothing to compare), these switch often, read the position held, and
    have exact ties (all-zero activations) that the batched path must settle as bar by bar."""
    generator = torch.Generator().manual_seed(seed)
    for network in (module.model.eam, module.model.sam):
        assert network is not None
        for weights in network.parameters():
            fan_in = weights[0].numel() if weights.dim() > 1 else 1
            noise = torch.randn(weights.shape, generator=generator)
            weights.copy_(noise * scale / fan_in**0.5 if weights.dim() > 1 else noise * 0.0)
    return module


def module_state(module: CryptoModule) -> tuple:
    """Everything a module carries to its next event, comparable with ``==``."""
    features = module._features
    assert features is not None
    refiner = features._refiner
    windows = [
        (w._buffer.tobytes(), w._slot, w._day, w.rows, w.days_seen)
        for w in (refiner._values, refiner._scores)
    ]
    return (
        features._latest.tobytes(),
        list(features._latest_observed),
        sorted(features._pending),
        features._sequence,
        features._last_close,
        windows,
        refiner.features.tobytes(),
        refiner.z.tobytes(),
        refiner.ready,
        [r.tobytes() for r in module._states._rows],
        [m.tobytes() for m in module._states._metrics],
        list(module._signals),
        module._bars,
        module.position,
        module.signal,
        module.ready,
    )
