"""The whole pipeline, from stores to decisions: the engine under replay decides exactly as the
trained Crypto Modules do when called directly, and no data after t changes a decision at t."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest.pipeline import backtest_vote, read_histories, replay_driver, train_modules
from bot.events import Bar, Metric
from bot.feed import dataset
from bot.feed.synthetic import generate_market, write_market
from bot.store import MarketStore, MetricStore
from bot.timeframes import DAY_MS, to_ms
from config.schema import (
    AppConfig,
    BrokerConfig,
    CryptoModuleParams,
    DataConfig,
    DateWindow,
    DQNParams,
    MarketConfig,
    TrainingConfig,
    WindowsConfig,
)
from strategies.crypto_module import CryptoModule

COINS = ("BTC", "ETH")
SEED = 1
WINDOWS = WindowsConfig(
    train=DateWindow(start=date(2020, 1, 1), end=date(2021, 6, 30)),
    validation=DateWindow(start=date(2021, 7, 1), end=date(2021, 9, 30)),
    test=DateWindow(start=date(2021, 10, 1), end=date(2021, 12, 31)),
)
CUTOFF = to_ms("2021-11-15")  # inside the test window
_AGENT = DQNParams(
    total_env_steps=8_000,
    learning_starts=500,
    batch_size=32,
    buffer_size=10_000,
    target_update_interval=50,
    channels=(8, 8, 8),
    hidden=16,
    eval_interval=25,
)
# A small budget that still learns a policy which trades (checked below): a policy that never
# changes its mind could not reveal a leak.
AGENTS = CryptoModuleParams(
    window=16,
    num_envs=8,
    episode_length=64,
    eam=_AGENT.model_copy(update={"gamma": 0.0, "total_env_steps": 4_000}),
    sam=_AGENT,
)


def config(root: Path) -> AppConfig:
    return AppConfig(
        data=DataConfig(dir=root / "data"),
        market=MarketConfig(coins=COINS, timeframe="6h", start="2020-01-01", end="2021-12-31"),
        windows=WINDOWS,
        agents=AGENTS,
        training=TrainingConfig(seeds=(SEED,), models_dir=root / "models"),
        # training pays the [broker] cost: 0.1 %, the fee this budget was sized for (at 0.15 %
        # its tiny modules stop trading, and a policy that never trades could not reveal a leak)
        broker=BrokerConfig(fee_rate=0.001, slippage_bps=0.0),
    )


def perturb_after(market, cutoff: int, seed: int = 99):
    """The same market with every candle opening at/after ``cutoff`` and every metric value
    known after ``cutoff`` replaced by noise (prices stay valid candles)."""
    rng = np.random.default_rng(seed)
    candles = {}
    for coin, frame in market.candles.items():
        frame = frame.copy()
        late = frame["open_time"] >= cutoff
        factor = rng.uniform(0.5, 1.5, int(late.sum()))
        for column in ("open", "high", "low", "close", "volume"):
            frame.loc[late, column] = frame.loc[late, column].to_numpy() * factor
        candles[coin] = frame
    metrics = market.metrics.copy()
    known_late = metrics["observed_at"] + DAY_MS >= cutoff  # known after cutoff (lag > 0)
    metrics.loc[known_late, "value"] = rng.normal(0, 1e6, int(known_late.sum()))
    return dataclasses.replace(market, candles=candles, metrics=metrics)


async def run_pipeline(root: Path, market) -> tuple[AppConfig, dict, list]:
    """Stores -> DRU fitted on train -> CMs trained -> replay of the test window."""
    cfg = config(root)
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metric_store,
    ):
        await write_market(market, store, metric_store, publication_lag_ms=3_600_000)
        await dataset.resample_coins(cfg, store)
        histories = await read_histories(cfg, store, metric_store, COINS)
        folders = train_modules(cfg, histories, (SEED,), cfg.training.models_dir)
        driver = await replay_driver(
            cfg, store, metric_store, COINS, cfg.windows.test.start_ms, cfg.windows.test.end_ms
        )
        run = await backtest_vote(cfg, {c: folders[c, SEED] for c in COINS}, driver)
    return cfg, {c: folders[c, SEED] for c in COINS}, run


@pytest.fixture(scope="module")
def market():
    return generate_market(
        list(COINS), to_ms("2020-01-01"), to_ms("2022-01-01"), seed=11, scenarios=()
    )


@pytest.fixture(scope="module")
def original(market, tmp_path_factory: pytest.TempPathFactory):
    """The pipeline on the unperturbed market (shared by both tests)."""
    return asyncio.run(run_pipeline(tmp_path_factory.mktemp("original"), market))


def switches(decisions: list, coin: str, start: int) -> int:
    weights = [d.coin_weight for d in decisions if d.coin == coin and d.ts >= start]
    return sum(1 for a, b in pairwise(weights) if a != b)


async def test_replay_decisions_equal_the_modules_called_bar_by_bar(original) -> None:
    cfg, folders, run = original
    # The direct path: fresh modules from the same folders, fed the stored history by hand.
    modules = {c: CryptoModule.load(folder, cfg.market.symbol(c)) for c, folder in folders.items()}
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metric_store,
    ):
        metrics = await metric_store.read_metrics()
        bars = {
            c: await store.read_candles(cfg.market.exchange, cfg.market.symbol(c), "6h")
            for c in COINS
        }
    events: list[tuple[int, int, object]] = []
    for row in metrics.itertuples():
        events.append(
            (row.known_at, 0, Metric(row.known_at, row.asset, row.name, row.observed_at, row.value))
        )
    for coin, frame in bars.items():
        for r in frame.itertuples():
            close = r.open_time + 6 * 3_600_000
            if close < cfg.windows.test.end_ms:
                bar = Bar(
                    close,
                    cfg.market.exchange,
                    cfg.market.symbol(coin),
                    "6h",
                    r.open_time,
                    r.open,
                    r.high,
                    r.low,
                    r.close,
                    r.volume,
                )
                events.append((close, 1, bar))
    events.sort(
        key=lambda e: (
            e[0],
            e[1],
            getattr(e[2], "symbol", ""),
            getattr(e[2], "asset", ""),
            getattr(e[2], "name", ""),
        )
    )
    # Each module's SAM reads what the account held at the close (its sleeve of 1/m at least
    # half in its coin): the weights the replay recorded before each decision; none before.
    held = run.result.weights
    m = len(modules)
    direct = []
    for ts, kind, event in events:
        for coin, module in modules.items():
            if kind == 0:
                module.on_metric(event)  # type: ignore[arg-type]
                continue
            weight = float(held[coin].get(ts, 0.0)) if coin in held else 0.0
            decision = module.decide(event, float(weight * m >= 0.5))  # type: ignore[arg-type]
            if decision is not None:
                direct.append(decision)
    engine = [(d.ts, d.coin, d.cash, d.coin_weight) for d in run.decisions]
    assert engine == [(d.ts, d.coin, d.cash, d.coin_weight) for d in direct]
    assert switches(run.decisions, "BTC", cfg.windows.test.start_ms) >= 3  # a policy that trades


async def test_no_data_after_t_changes_any_decision_at_or_before_t(
    tmp_path: Path, market, original
) -> None:
    # Everything is redone on the perturbed data: DRU selection, training, replay.
    _, _, original = original
    _, _, perturbed = await run_pipeline(tmp_path, perturb_after(market, CUTOFF))
    assert switches(original.decisions, "BTC", WINDOWS.test.start_ms) >= 3

    def upto(decisions: list, limit: int) -> list:
        return [(d.ts, d.coin, d.cash, d.coin_weight) for d in decisions if d.ts <= limit]

    assert upto(original.decisions, CUTOFF) == upto(perturbed.decisions, CUTOFF)
    trades = original.result.trades
    late = perturbed.result.trades
    # Orders decided by t are the same; their fills (at the next open, after t) may differ.
    assert trades.loc[trades.ts < CUTOFF].equals(late.loc[late.ts < CUTOFF])
    pd.testing.assert_series_equal(
        original.result.equity.loc[:CUTOFF], perturbed.result.equity.loc[:CUTOFF]
    )
    # Not vacuous: the perturbation does change what happens after t.
    assert upto(original.decisions, 2**62) != upto(perturbed.decisions, 2**62)
