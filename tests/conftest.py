"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store import MarketStore, MetricStore


@pytest.fixture
async def market_store(tmp_path: Path) -> AsyncIterator[MarketStore]:
    """An empty ``market.db`` in a temporary folder."""
    store = await MarketStore.open(tmp_path / "market.db")
    yield store
    await store.close()


@pytest.fixture
async def metric_store(tmp_path: Path) -> AsyncIterator[MetricStore]:
    """An empty ``metrics.db`` in a temporary folder."""
    store = await MetricStore.open(tmp_path / "metrics.db")
    yield store
    await store.close()
