"""The replay benchmarks' market: portfolio (c) - BTC, STORJ, BLZ, LINK - on a synthetic market
with the paper's coin names (``../shared/data`` does not hold two full years of STORJ and BLZ,
listed mid-2020), 6h bars from 2019-01, two test years (2020-2021), models trained with a small
budget (replay speed does not depend on how good they are)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backtest.pipeline import RecordingPolicy, read_histories, replay_driver
from backtest.replay import ReplayDriver
from bot.engine.step import DecisionContext
from bot.feed import dataset
from bot.feed.synthetic import generate_market, write_market
from bot.store import MarketStore, MetricStore
from bot.timeframes import to_ms
from config.schema import (
    AppConfig,
    CryptoModuleParams,
    DataConfig,
    DateWindow,
    DQNParams,
    MarketConfig,
    TrainingConfig,
    WindowsConfig,
)
from strategies.agents.train import CoinHistory

COINS = ("BTC", "STORJ", "BLZ", "LINK")
SMALL = DQNParams(total_env_steps=2_000, learning_starts=200, eval_interval=50)

Trainer = Callable[
    [AppConfig, Mapping[str, CoinHistory], Sequence[int], Path], dict[tuple[str, int], Path]
]
"""``backtest.pipeline.train_modules`` or ``train_mars_modules``."""


@dataclass(frozen=True)
class PortfolioC:
    """The config, the replay of the test years (warm-up from 2019-01 included) and the
    trained folders by coin."""

    cfg: AppConfig
    driver: ReplayDriver
    folders: dict[str, Path]


async def portfolio_c(train: Trainer, prefix: str) -> PortfolioC:
    """Write the market to a temporary data dir, train one seed per coin with ``train`` and
    build the replay."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    windows = WindowsConfig(
        train=DateWindow(start="2019-07-01", end="2019-11-30"),
        validation=DateWindow(start="2019-12-01", end="2019-12-31"),
        test=DateWindow(start="2020-01-01", end="2021-12-31"),
    )
    cfg = AppConfig(
        data=DataConfig(dir=root / "data"),
        market=MarketConfig(coins=COINS, start="2019-01-01", end="2021-12-31"),
        windows=windows,
        agents=CryptoModuleParams(eam=SMALL.model_copy(update={"gamma": 0.0}), sam=SMALL),
        training=TrainingConfig(seeds=(1,), models_dir=root / "models"),
    )
    print("data: a synthetic market (../shared/data lacks two years of STORJ and BLZ)")
    market = generate_market(list(COINS), to_ms("2019-01-01"), to_ms("2022-01-01"), seed=3)
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        await write_market(market, store, metrics)
        await dataset.resample_coins(cfg, store)
        histories = await read_histories(cfg, store, metrics, COINS)
        trained = train(cfg, histories, (1,), cfg.training.models_dir)
        test = cfg.windows.test
        driver = await replay_driver(cfg, store, metrics, COINS, test.start_ms, test.end_ms)
    return PortfolioC(cfg, driver, {c: trained[c, 1] for c in COINS})


class BarByBar:
    """A policy without ``prepare``: the replay feeds its modules one bar at a time."""

    def __init__(self, policy: RecordingPolicy) -> None:
        self.policy, self.name = policy, policy.name

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        return self.policy.decide(context)
