"""The candidate pool: own metrics plus market-wide ones, qualified ids, empty pools."""

from __future__ import annotations

import pandas as pd
import pytest

from strategies.features.pool import available_metrics, candidate_pool, qualified_id, split_id

AVAILABLE = {
    "BTC": ["hash_rate", "active_addresses"],
    "LINK": ["tx_count"],
    "MARKET": ["fear_greed"],
}


def test_pool_is_own_metrics_then_market_wide_ones_in_order() -> None:
    pool = candidate_pool("LINK", AVAILABLE, market_wide_assets=["BTC", "MARKET"])
    assert pool == [
        "LINK:tx_count",
        "BTC:active_addresses",
        "BTC:hash_rate",
        "MARKET:fear_greed",
    ]


def test_btc_metrics_are_not_listed_twice_for_btc() -> None:
    pool = candidate_pool("BTC", AVAILABLE, market_wide_assets=["BTC"])
    assert pool == ["BTC:active_addresses", "BTC:hash_rate"]


def test_a_coin_without_own_metrics_still_gets_the_market_wide_pool() -> None:
    assert candidate_pool("STORJ", AVAILABLE, market_wide_assets=["BTC"]) == [
        "BTC:active_addresses",
        "BTC:hash_rate",
    ]


def test_no_own_and_no_market_wide_metrics_is_an_empty_pool() -> None:
    assert candidate_pool("STORJ", AVAILABLE, market_wide_assets=[]) == []
    assert candidate_pool("STORJ", {}, market_wide_assets=["BTC"]) == []


def test_qualified_ids_round_trip_and_reject_malformed_ids() -> None:
    assert split_id(qualified_id("BTC", "blockchain_com.hash_rate")) == (
        "BTC",
        "blockchain_com.hash_rate",
    )
    for bad in ("hash_rate", ":x", "BTC:"):
        with pytest.raises(ValueError, match="qualified metric id"):
            split_id(bad)


def test_available_metrics_lists_names_per_asset_sorted() -> None:
    frame = pd.DataFrame(
        {"asset": ["B", "A", "A", "A"], "name": ["z", "y", "x", "x"], "observed_at": [0] * 4}
    )
    assert available_metrics(frame) == {"A": ["x", "y"], "B": ["z"]}
    assert available_metrics(frame.iloc[:0]) == {}
