"""Reading one coin's DRU inputs from the stores and fitting its feature function from config.

Shared by ``cryptorlpm features select``, CM training, the backtest and the live daemon, so that
every consumer selects from the same pool with the same windows and known-time rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bot.feed.resample import resample_candles
from bot.store import MarketStore, MetricStore
from bot.timeframes import timeframe_ms
from config import AppConfig
from config.schema import FeatureConfig
from strategies.features.pipeline import FeatureSpec, fit_feature_spec
from strategies.features.pool import available_metrics, candidate_pool
from strategies.features.selection import daily_closes


class MissingDataError(LookupError):
    """The stores hold no bars for a coin the config asks for."""


class DataWindowError(MissingDataError, ValueError):
    """A window (train, validation, test) holds no bar to decide on (a ``ValueError`` too, for
    callers that treat an empty window as "nothing to do")."""


def check_windows(cfg: AppConfig, inputs: CoinInputs, names: Sequence[str]) -> None:
    """Raise :class:`DataWindowError`, naming the window, its dates and the dates the bars
    cover, unless every window of ``names`` (``"train"``, ``"validation"``, ``"test"``) has bars
    to decide on (training windows also need ``[agents].window`` bars of history before their
    first decision). Run before any training, so a window outside the data costs nothing."""
    from strategies.agents.train import decision_range

    step = timeframe_ms(inputs.timeframe)
    close_time = inputs.bars["open_time"].to_numpy(dtype="int64") + step
    for name in names:
        window = getattr(cfg.windows, name)
        lookback = 1 if name == "test" else cfg.agents.window
        try:
            decision_range(close_time, (window.start_ms, window.end_ms), lookback)
        except DataWindowError:
            first, last = (pd.Timestamp(int(t), unit="ms") for t in (close_time[0], close_time[-1]))
            raise DataWindowError(
                f"windows.{name} {window} has no {inputs.timeframe} bars of "
                f"{cfg.market.symbol(inputs.coin)} to decide on: the stored bars close from "
                f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC ({cfg.data.market_path}). "
                "Move [windows] inside the data, or fill the data first"
            ) from None


@dataclass(frozen=True)
class CoinInputs:
    """A coin's bars at the strategy timeframe and the long frame of every stored metric."""

    coin: str
    timeframe: str
    bars: pd.DataFrame
    metrics: pd.DataFrame


async def read_coin_inputs(
    cfg: AppConfig, market: MarketStore, metrics: MetricStore, coin: str
) -> CoinInputs:
    """The coin's ``cfg.market.timeframe`` bars (resampled from the base timeframe when the store
    has none at the strategy timeframe) and every stored metric (all assets, so market-wide
    candidates can be offered)."""
    symbol = cfg.market.symbol(coin)
    exchange, timeframe, base = cfg.market.exchange, cfg.market.timeframe, cfg.market.base_timeframe
    bars = await market.read_candles(exchange, symbol, timeframe)
    if bars.empty and base != timeframe:
        hourly = await market.read_candles(exchange, symbol, base)
        if not hourly.empty:
            bars = resample_candles(hourly, base, timeframe).frame
    if bars.empty:
        raise MissingDataError(
            f"no {timeframe} bars of {symbol} on {exchange} in {cfg.data.market_path}; "
            "generate, import or download the data first (cryptorlpm data --help)"
        )
    return CoinInputs(coin, timeframe, bars, await metrics.read_metrics())


def market_wide_assets(cfg: AppConfig, metrics: pd.DataFrame) -> list[str]:
    """The configured market-wide assets that the metric store actually holds."""
    present = set(metrics["asset"].unique()) if not metrics.empty else set()
    return [asset for asset in cfg.metrics.market_wide_assets if asset in present]


def fit_coin_features(
    cfg: AppConfig, inputs: CoinInputs, train_start_ms: int, train_end_ms: int
) -> FeatureSpec:
    """Select the coin's metrics and fit the refiner on ``[train_start_ms, train_end_ms)`` only."""
    return fit_features(
        inputs.coin,
        inputs.bars,
        inputs.metrics,
        inputs.timeframe,
        cfg.features,
        train_start_ms,
        train_end_ms,
        market_wide_assets=market_wide_assets(cfg, inputs.metrics),
        publication_lag_ms=cfg.metrics.publication_lag_ms,
    )


def fit_features(
    coin: str,
    bars: pd.DataFrame,
    metrics: pd.DataFrame,
    timeframe: str,
    features: FeatureConfig,
    train_start_ms: int,
    train_end_ms: int,
    *,
    market_wide_assets: Sequence[str] = (),
    publication_lag_ms: int,
) -> FeatureSpec:
    """The DRU fit from plain frames: pool (own + ``market_wide_assets``), selection and refiner,
    on ``[train_start_ms, train_end_ms)`` only, with every knob of ``features``."""
    pool = candidate_pool(coin, available_metrics(metrics), market_wide_assets=market_wide_assets)
    return fit_feature_spec(
        coin,
        daily_closes(bars, timeframe_ms(timeframe)),
        metrics,
        pool,
        features,
        train_start_ms,
        train_end_ms,
        publication_lag_ms=publication_lag_ms,
        min_obs=features.min_obs,
        max_stale_days=features.max_stale_days,
        min_periods=features.min_periods_days,
    )
