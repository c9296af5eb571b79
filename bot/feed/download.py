"""``cryptorlpm data download``: every configured coin's candles (ccxt) and metrics (sanpy).

Candles come from ``cfg.exchange`` at ``cfg.market.base_timeframe``; metrics from Santiment for
every coin that has a slug in ``cfg.santiment.slugs``. Both resume from what the stores hold.
Only a config with ``market.source = "exchange"`` may download (see
:func:`bot.feed.dataset.check_source`): downloaded candles must never land in a synthetic or
imported series.
"""

from __future__ import annotations

import logging

from rich.progress import Progress

from bot.feed.dataset import check_source, check_stores
from bot.feed.exchange import create_exchange
from bot.feed.history import DownloadError, download_candles
from bot.feed.santiment import SantimentError, SantimentSource
from bot.store import MarketStore, MetricStore
from config import AppConfig, Secrets

__all__ = ["DownloadError", "download_all"]

log = logging.getLogger(__name__)


async def download_all(
    cfg: AppConfig,
    market: MarketStore,
    metrics: MetricStore,
    *,
    since_ms: int,
    until_ms: int | None,
    with_metrics: bool,
    progress: Progress,
    secrets: Secrets | None = None,
) -> None:
    """Download candles of every coin, then (optionally) their Santiment metrics.

    Raises :class:`DownloadError` with a one-line reason when a download cannot finish; what was
    stored before the failure stays, and a rerun resumes after it. Raises
    :class:`~bot.feed.dataset.DatasetConfigError` before any request when ``cfg`` is not an
    exchange-source config, and :class:`~bot.feed.exchange.ExchangeConfigError` for an exchange
    id or ``api_url`` ccxt cannot use.
    """
    check_source(cfg, "exchange")
    await check_stores(market, metrics, "exchange")
    secrets = secrets or Secrets()
    exchange = create_exchange(cfg.exchange, secrets)
    try:
        for coin in cfg.market.coins:
            symbol = cfg.market.symbol(coin)
            task = progress.add_task(f"{symbol} {cfg.market.base_timeframe}", total=None)
            result = await download_candles(
                exchange,
                market,
                exchange_name=cfg.market.exchange,
                symbol=symbol,
                timeframe=cfg.market.base_timeframe,
                since_ms=since_ms,
                until_ms=until_ms,
                max_retries=cfg.exchange.max_retries,
                base_delay_s=cfg.exchange.retry_base_s,
                progress=lambda done, total, t=task: progress.update(
                    t, completed=done, total=total
                ),
            )
            log.info(
                "%s: %d candles written in %d pages", symbol, result.rows_written, result.pages
            )
    finally:
        await exchange.close()
    if not with_metrics:
        return
    source = SantimentSource(cfg.santiment, secrets.santiment_api_key)
    end_ms = until_ms if until_ms is not None else market_now_ms()
    for coin in cfg.market.coins:
        slug = cfg.santiment.slugs.get(coin)
        if slug is None:
            log.info("%s: no Santiment slug configured, no own metrics", coin)
            continue
        task = progress.add_task(f"{coin} metrics ({slug})", total=len(cfg.santiment.metrics))
        try:
            report = await source.download(
                coin,
                slug,
                cfg.santiment.metrics,
                since_ms,
                end_ms,
                metrics,
                publication_lag_ms=cfg.metrics.publication_lag_ms,
                progress=lambda metric, done, total, t=task: progress.update(
                    t, completed=done, total=total
                ),
            )
        except SantimentError as exc:
            raise DownloadError(f"Santiment metrics for {coin} ({slug}): {exc}") from None
        log.info("%s", report.summary())


def market_now_ms() -> int:
    """Wall-clock now in epoch ms; the end of an open-ended metric download."""
    from bot.clock import WallClock

    return WallClock().now_ms()
