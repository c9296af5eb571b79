"""Building a run's dataset from the configured source: the steps the CLI and the demo share.

Each function takes the config and open stores, so the CLI, the demo pipeline and the paper
experiment all fill ``market.db`` and ``metrics.db`` the same way.

Real and synthetic data never share a store. ``market.source`` says where a config's candles
come from, and each filling step checks it (:func:`check_source`): the synthetic market is
written only for ``source = "synthetic"``, always under ``market.exchange = "synthetic"``, and
imported or downloaded candles only for ``"csv"``/``"exchange"``, never under that name. And
each step checks what the stores already hold (:func:`check_stores`), so a config switched to
another source on the same ``data.dir`` cannot mix them either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bot.store import MarketStore, MetricStore
from bot.timeframes import check_resample, ms_to_iso
from config import AppConfig

if TYPE_CHECKING:
    from bot.feed.csv_import import ImportReport

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

SYNTHETIC_EXCHANGE = "synthetic"
"""``market.exchange`` of the synthetic market's series, and of no other."""

SYNTHETIC_SOURCE = "synthetic"
"""``source`` of the synthetic market's metric rows."""

SYNTHETIC_TIMEFRAME = "1h"
"""The only candle timeframe the synthetic market generates."""

Source = Literal["synthetic", "csv", "exchange"]

_STEP_WRITES = {
    "synthetic": "generates the synthetic market",
    "csv": "imports candle and metric files",
    "exchange": "downloads exchange candles",
}


class DatasetConfigError(ValueError):
    """The config does not fit the dataset step asked for; the message names the keys."""


@dataclass(frozen=True, slots=True)
class ResampleSummary:
    """Resampling of one coin: bars written, bins with missing source candles (kept), and the
    last bin when it was still forming (not written)."""

    symbol: str
    bars: int
    incomplete: int
    forming_since: int | None = None


def check_source(cfg: AppConfig, source: Source) -> None:
    """Raise :class:`DatasetConfigError` unless ``cfg`` is made for writing ``source`` data.

    ``market.source`` must be ``source``; the synthetic market must be stored under
    ``market.exchange = "synthetic"`` with ``market.base_timeframe = "1h"`` (the timeframe it
    generates), and real candles under any other exchange name.
    """
    market = cfg.market
    if market.source != source:
        raise DatasetConfigError(
            f"market.source = {market.source!r}, but this step {_STEP_WRITES[source]} and needs "
            f"market.source = {source!r}; real and synthetic series must not share a store, so "
            "use a config (and data.dir) made for that source"
        )
    if source == "synthetic" and market.exchange != SYNTHETIC_EXCHANGE:
        raise DatasetConfigError(
            f"market.exchange = {market.exchange!r}: the synthetic market is stored under "
            f"market.exchange = {SYNTHETIC_EXCHANGE!r} only, so it can never mix with real candles"
        )
    if source == "synthetic" and market.base_timeframe != SYNTHETIC_TIMEFRAME:
        raise DatasetConfigError(
            f"market.base_timeframe = {market.base_timeframe!r}: the synthetic market "
            f"generates {SYNTHETIC_TIMEFRAME} candles only; set market.base_timeframe = "
            f"{SYNTHETIC_TIMEFRAME!r} (market.timeframe may be any multiple of it)"
        )
    if source != "synthetic" and market.exchange == SYNTHETIC_EXCHANGE:
        raise DatasetConfigError(
            f"market.exchange = {SYNTHETIC_EXCHANGE!r} names the synthetic market's series; "
            'real candles need the exchange\'s name, e.g. market.exchange = "binance"'
        )


async def check_stores(market: MarketStore, metrics: MetricStore, source: Source) -> None:
    """Raise :class:`DatasetConfigError` when the stores already hold data of the other kind.

    The synthetic market may only go into stores without real data, and real data (files,
    downloads) only into stores without the synthetic market: a config switched to another
    source but left on the same ``data.dir`` would otherwise mix them (metrics of both kinds
    would become candidates of one feature selection).
    """
    exchanges = await market.exchanges()
    sources = await metrics.sources()
    if source == "synthetic":
        real = [e for e in exchanges if e != SYNTHETIC_EXCHANGE]
        real_metrics = [s for s in sources if s != SYNTHETIC_SOURCE]
        if real or real_metrics:
            held = ", ".join([*(f"candles of {e!r}" for e in real), *real_metrics])
            raise DatasetConfigError(
                f"the stores in {market.path.parent} hold real data ({held}); the synthetic "
                "market needs a data.dir of its own"
            )
        return
    if SYNTHETIC_EXCHANGE in exchanges or SYNTHETIC_SOURCE in sources:
        raise DatasetConfigError(
            f"the stores in {market.path.parent} hold the synthetic market; real data needs a "
            "data.dir of its own (set data.dir in the config)"
        )


async def build_synthetic(cfg: AppConfig, market: MarketStore, metrics: MetricStore) -> None:
    """Generate the synthetic market of ``cfg`` and write it into the stores.

    Raises :class:`DatasetConfigError` when ``cfg`` is not a synthetic-market config (see
    :func:`check_source`), e.g. asks for a base timeframe other than the generated ``"1h"``.
    """
    from bot.feed.synthetic import generate_from_config, write_market

    check_source(cfg, "synthetic")
    await check_stores(market, metrics, "synthetic")
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
) -> ImportReport:
    """Import a folder laid out like ``../shared/data`` (``ohlcv/``, ``onchain/``).

    Candles go under ``market.exchange``; see :func:`bot.feed.csv_import.import_directory`.
    Raises :class:`DatasetConfigError` before reading anything unless ``cfg`` is a CSV-source
    config (:func:`check_source`).
    """
    from bot.feed.csv_import import import_directory

    check_source(cfg, "csv")
    await check_stores(market, metrics, "csv")
    return await import_directory(
        root,
        market,
        metrics,
        exchange=cfg.market.exchange,
        quote=cfg.market.quote,
        publication_lag_ms=cfg.metrics.publication_lag_ms,
        progress=progress,
    )


async def check_csv_dir(
    cfg: AppConfig, root: Path, progress: Progress | None = None
) -> ImportReport:
    """Validate the files :func:`import_csv_dir` would import, writing nothing."""
    from bot.feed.csv_import import check_directory

    return await check_directory(root, quote=cfg.market.quote, progress=progress)


async def resample_coins(
    cfg: AppConfig, market: MarketStore, coins: tuple[str, ...] | None = None
) -> list[ResampleSummary]:
    """Resample every coin's base-timeframe candles to the strategy timeframe, in the store.

    Bins with missing source candles inside the history (exchange outages) are kept and counted;
    the last bin, when still forming past the newest source candle, is never written. Raises
    :class:`DatasetConfigError` when ``market.timeframe`` is not a whole multiple of
    ``market.base_timeframe``.
    """
    from bot.feed.resample import resample_store

    if cfg.market.timeframe == cfg.market.base_timeframe:
        return []
    try:
        check_resample(cfg.market.base_timeframe, cfg.market.timeframe)
    except ValueError as exc:
        raise DatasetConfigError(
            f"market.timeframe = {cfg.market.timeframe!r} cannot be built from "
            f"market.base_timeframe = {cfg.market.base_timeframe!r}: {exc}"
        ) from None
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
        if result.incomplete:
            log.info(
                "%s %s: %d bins with missing %s candles kept, the first at %s",
                symbol,
                cfg.market.timeframe,
                len(result.incomplete),
                cfg.market.base_timeframe,
                ms_to_iso(result.incomplete[0].open_time),
            )
        forming = None if result.forming is None else result.forming.open_time
        summaries.append(
            ResampleSummary(symbol, len(result.frame), len(result.incomplete), forming)
        )
    return summaries
