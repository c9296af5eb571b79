"""Building a run's dataset from the configured source: the steps the CLI and the demo share.

Each function takes the config and open stores, so the CLI, the demo pipeline and the paper
experiment all fill ``market.db`` and ``metrics.db`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.store import MarketStore, MetricStore
from config import AppConfig

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ResampleSummary:
    """Resampling of one coin: bars written and bins with missing source candles."""

    symbol: str
    bars: int
    incomplete: int


async def build_synthetic(cfg: AppConfig, market: MarketStore, metrics: MetricStore) -> None:
    """Generate the synthetic market of ``cfg`` and write it into the stores."""
    from bot.feed.synthetic import generate_from_config, write_market

    generated = generate_from_config(cfg)
    await write_market(
        generated,
        market,
        metrics,
        exchange=cfg.market.exchange,
        quote=cfg.market.quote,
        publication_lag_ms=cfg.metrics.publication_lag_ms,
    )


async def import_csv_dir(
    cfg: AppConfig,
    root: Path,
    market: MarketStore,
    metrics: MetricStore,
    progress: Progress | None = None,
) -> object:
    """Import a folder laid out like ``../shared/data`` (``ohlcv/``, ``onchain/``)."""
    from bot.feed.csv_import import import_directory

    return await import_directory(
        root,
        market,
        metrics,
        exchange=cfg.market.exchange,
        quote=cfg.market.quote,
        publication_lag_ms=cfg.metrics.publication_lag_ms,
        progress=progress,
    )


async def resample_coins(
    cfg: AppConfig, market: MarketStore, coins: tuple[str, ...] | None = None
) -> list[ResampleSummary]:
    """Resample every coin's base-timeframe candles to the strategy timeframe, in the store."""
    from bot.feed.resample import resample_store

    if cfg.market.timeframe == cfg.market.base_timeframe:
        return []
    summaries = []
    for coin in coins or cfg.market.coins:
        symbol = cfg.market.symbol(coin)
        if (
            await market.last_open_time(cfg.market.exchange, symbol, cfg.market.base_timeframe)
            is None
        ):
            continue
        result = await resample_store(
            market,
            exchange=cfg.market.exchange,
            symbol=symbol,
            source_timeframe=cfg.market.base_timeframe,
            target_timeframe=cfg.market.timeframe,
        )
        summaries.append(ResampleSummary(symbol, len(result.frame), len(result.incomplete)))
    return summaries
