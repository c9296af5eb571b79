"""Crypto Modules trained on the synthetic market: they exploit the planted signal out of sample,
and the whole path (stores -> DRU -> training -> registry -> handler -> vote) holds together."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from bot.engine import Account, DecisionContext, Instant
from bot.engine.step import instants
from bot.events import Bar, Metric
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market, write_market
from bot.store import MarketStore, MetricStore
from bot.timeframes import to_ms
from config.schema import (
    AppConfig,
    DataConfig,
    DateWindow,
    FeatureConfig,
    MarketConfig,
    WindowsConfig,
)
from strategies.agents.env import portfolio_log_returns
from strategies.agents.params import CryptoModuleParams, DQNParams, TrainingConfig
from strategies.agents.train import (
    Windows,
    decision_range,
    refine_history,
    train_cm,
    train_crypto_module,
)
from strategies.crypto_module import CryptoModule
from strategies.portfolio import PortfolioVote
from strategies.registry import list_models, show_model

# Seven years of a synthetic market (crash scenarios off: they are not what the metrics predict).
# The DRU is fitted and the agents trained on 2017-03 .. 2021-12, the checkpoint is chosen on
# 2022-01 .. 2022-06, and the test is the 18 months after that, never seen by either.
WINDOWS = WindowsConfig(
    train=DateWindow(start=date(2017, 3, 1), end=date(2021, 12, 31)),
    validation=DateWindow(start=date(2022, 1, 1), end=date(2022, 6, 30)),
    test=DateWindow(start=date(2022, 7, 1), end=date(2023, 12, 30)),
)
SMALL_BUDGET = CryptoModuleParams(use_eam=False, sam=DQNParams(total_env_steps=24_000))
COST = AppConfig().broker.trading_cost
SEEDS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def planted_market_history():
    market = generate_market(
        ["BTC", "ETH", "SOL"], to_ms("2017-01-01"), to_ms("2024-01-01"), seed=7, scenarios=()
    )
    bars = resample_candles(market.candles["ETH"], "1h", "6h").frame
    windows = Windows.from_config(WINDOWS)
    history = refine_history(
        "ETH",
        bars,
        market.metrics,
        "6h",
        FeatureConfig(),
        windows.train,
        market_wide_assets=["MARKET"],
    )
    return market, history, windows


def random_policy_score(log_returns: np.ndarray, fee: float, draws: int = 50) -> float:
    """Mean net log return of policies that pick all cash / all coin by a coin flip."""
    rng = np.random.default_rng(0)
    return float(
        np.mean(
            [
                portfolio_log_returns(log_returns, rng.integers(0, 2, len(log_returns)), fee).sum()
                for _ in range(draws)
            ]
        )
    )


@pytest.mark.slow  # ~100 s loaded: a learning-quality check, not a behaviour of the code paths
def test_sam_beats_buy_and_hold_and_random_on_the_held_out_segment(planted_market_history):
    market, history, windows = planted_market_history
    selected = {m.split(":")[1] for m in history.feature_spec.metric_ids}
    assert selected & set(market.planted["ETH"])  # the DRU found leading metrics
    test = decision_range(history.close_time, windows.test, SMALL_BUDGET.window)
    log_returns = np.log(history.ohlcv[1:, 3] / history.ohlcv[:-1, 3])[test.first : test.last]
    random_score = random_policy_score(log_returns, COST)
    rows = []
    for seed in SEEDS:
        trained = train_cm(history, windows, SMALL_BUDGET, seed, cost=COST)
        rows.append((seed, trained.scores["test"]["sam"], trained.scores["test"]["buy_and_hold"]))
    print("\nseed  SAM(test)  B&H(test)  random(test)")
    for seed, sam, bh in rows:
        print(f"{seed:>4}  {sam:+9.3f}  {bh:+9.3f}  {random_score:+12.3f}")
    wins = sum(sam > bh and sam > random_score for _, sam, bh in rows)
    assert wins >= 3, rows


def test_train_from_the_stores_then_list_show_load_and_vote(tmp_path: Path):
    cfg = AppConfig(
        data=DataConfig(dir=tmp_path / "data"),
        market=MarketConfig(coins=("ETH",), start=date(2020, 7, 1), end=date(2021, 11, 1)),
        windows=WindowsConfig(
            train=DateWindow(start=date(2021, 1, 1), end=date(2021, 6, 30)),
            validation=DateWindow(start=date(2021, 7, 1), end=date(2021, 8, 31)),
            test=DateWindow(start=date(2022, 1, 1), end=date(2022, 2, 1)),  # beyond the data
        ),
    )
    market = generate_market(["ETH"], to_ms("2020-07-01"), to_ms("2021-11-01"), 3, scenarios=())

    async def store() -> None:
        cfg.data.dir.mkdir(parents=True)
        bars = await MarketStore.open(cfg.data.market_path)
        metrics = await MetricStore.open(cfg.data.metrics_path)
        try:
            await write_market(market, bars, metrics)
        finally:
            await bars.close()
            await metrics.close()

    asyncio.run(store())
    tiny = DQNParams(total_env_steps=800, learning_starts=100, channels=(4, 4, 4), hidden=8)
    params = CryptoModuleParams(
        window=8, num_envs=8, eam=tiny.model_copy(update={"gamma": 0.0}), sam=tiny
    )
    training = TrainingConfig(seeds=(1, 2))
    folders = train_crypto_module(
        cfg, "ETH", root=tmp_path / "models", training=training, params=params, progress=False
    )
    assert len(folders) == 2  # one artifact per configured seed
    models = list_models(tmp_path / "models")
    assert sorted(m.seed for m in models) == [1, 2]
    card = show_model(tmp_path / "models", models[0].id)
    assert {"train_log.jsonl", "weights_eam.pt", "weights_sam.pt", "cm.json"} <= set(card["files"])
    assert card["symbol"] == "ETH/USDT" and card["data_ranges"]["validation"]["first"]
    assert "test" not in card["data_ranges"] and card["scores"]["test"] == {}

    portfolio = PortfolioVote("USDT", [CryptoModule.load(folders[0], "ETH/USDT")])
    from tests.unit.agents.test_crypto_module import replay_events

    bars = resample_candles(market.candles["ETH"], "1h", "6h").frame
    events = replay_events(market, bars)
    known = [e for e in events if isinstance(e, Metric)]
    account = Account("USDT", 1_000.0)
    targets = []
    for instant in instants([e for e in events if isinstance(e, Bar)], known):
        targets.append(portfolio.decide(DecisionContext(instant, account)))
    targets.append(portfolio.decide(DecisionContext(Instant(10**14, (), ()), account)))
    assert len(targets) == len(bars) + 1
    assert {tuple(sorted(t)) for t in targets} == {("ETH", "USDT")}
    assert all(t["ETH"] in (0.0, 1.0) and sum(t.values()) == 1.0 for t in targets)
