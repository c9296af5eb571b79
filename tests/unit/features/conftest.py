"""Fixtures of the DRU tests: one toy market and a feature spec fitted on its first 300 days."""

from __future__ import annotations

import pytest

from bot.timeframes import DAY_MS
from config.schema import FeatureConfig
from strategies.features.pipeline import FeatureSpec, fit_feature_spec
from strategies.features.pool import available_metrics, candidate_pool
from strategies.features.selection import daily_closes
from tests.unit.features.toy_market import MARKET_ASSET, TIMEFRAME_MS, ToyMarket, toy_market

TRAIN_DAYS = 300
CONFIG = FeatureConfig(norm_window_days=60, pca_window_days=90)


@pytest.fixture(scope="package")
def toy() -> ToyMarket:
    """420 days of one coin ``AAA``: 6 leading, 6 noise and 3 market-wide metrics, with gaps."""
    return toy_market(n_days=420, leading=6, noise=6, market=3, seed=11)


@pytest.fixture(scope="package")
def toy_spec(toy: ToyMarket) -> FeatureSpec:
    """``AAA``'s feature spec fitted on the first ``TRAIN_DAYS`` days."""
    return fit_toy_spec(toy)


def fit_toy_spec(toy: ToyMarket, pool: list[str] | None = None) -> FeatureSpec:
    """Fit ``AAA``'s spec on the first ``TRAIN_DAYS`` days (with the toy's full pool by default)."""
    if pool is None:
        available = available_metrics(toy.metrics)
        pool = candidate_pool("AAA", available, market_wide_assets=[MARKET_ASSET])
    return fit_feature_spec(
        "AAA",
        daily_closes(toy.bars["AAA"], TIMEFRAME_MS),
        toy.metrics,
        pool,
        CONFIG,
        toy.start_ms,
        toy.start_ms + TRAIN_DAYS * DAY_MS,
    )
