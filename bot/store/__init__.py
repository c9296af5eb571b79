"""SQLite stores (aiosqlite, WAL): ``market.db`` for candles, ``metrics.db`` for metrics."""

from bot.store.market import Coverage, MarketStore
from bot.store.metrics import MetricCoverage, MetricStore

__all__ = ["Coverage", "MarketStore", "MetricCoverage", "MetricStore"]
