"""On the default synthetic market, the selection finds the planted leading metrics."""

from __future__ import annotations

import pytest

from bot.feed import synthetic
from bot.timeframes import HOUR_MS, to_ms
from config.schema import FeatureConfig
from strategies.features.pipeline import compute_features, fit_feature_spec
from strategies.features.pool import available_metrics, candidate_pool, split_id
from strategies.features.selection import daily_closes

COINS = ("BTC", "ETH", "SOL", "LINK", "STORJ")
TRAIN_START, TRAIN_END = to_ms("2020-01-01"), to_ms("2022-01-01")


@pytest.fixture(scope="module")
def market() -> object:
    return synthetic.generate_market(COINS, to_ms("2020-01-01"), to_ms("2022-12-31"), 7)


@pytest.mark.parametrize("coin", COINS)
def test_at_least_80_percent_of_the_chosen_metrics_are_planted(market: object, coin: str) -> None:
    pool = candidate_pool(
        coin, available_metrics(market.metrics), market_wide_assets=[synthetic.MARKET_ASSET]
    )
    assert len(market.planted[coin]) >= 10 and len(pool) > 10
    spec = fit_feature_spec(
        coin,
        daily_closes(market.candles[coin], HOUR_MS),
        market.metrics,
        pool,
        FeatureConfig(),
        TRAIN_START,
        TRAIN_END,
    )
    kept = spec.selection.kept
    planted = [m for m in kept if split_id(m) in {(coin, n) for n in market.planted[coin]}]
    assert len(kept) == 10
    assert len(planted) >= 8, f"{coin}: only {len(planted)}/10 planted: {kept}"
    # The fitted spec runs on the whole history, training and after.
    frame = compute_features(spec, market.candles[coin], market.metrics, HOUR_MS)
    assert frame.ready[-1] and frame.features.shape[1] == spec.width >= 1
