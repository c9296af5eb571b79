"""Closed bars for the daemon over REST: its fallback, its backfill and its catch-up at start.

The daemon's primary bar source is the kline websocket (:mod:`bot.feed.kline_stream`); REST
fills in whatever the socket cannot vouch for. Whether a candle is closed is the exchange's call
on the exchange's clock: a candle followed by a later one in the same answer is final, and a
candle with no later one only once the exchange's clock (``fetch_time``, or a reading the caller
passes) has passed its close. A local clock running ahead never passes a forming candle.

A live cycle gets one or two new candles per coin, so pages are handled as plain tuples
(validated in plain Python), never as frames.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.events import Bar
from bot.feed.history import closed_candle_rows
from bot.feed.retry import DEFAULT_MAX_WAIT_S, call_with_retries, retry_after_from
from bot.timeframes import CandleGrid

log = logging.getLogger(__name__)


async def fetch_closed_bars(
    exchange: Any,
    *,
    exchange_name: str,
    symbol: str,
    timeframe: str,
    since_ms: int,
    now_ms: int | None = None,
    exchange_time_ms: int | None = None,
    limit: int = 1000,
    max_retries: int = 5,
    base_delay_s: float = 1.0,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> list[Bar]:
    """Closed ``symbol`` bars with ``open_time >= since_ms`` and ``open_time + tf <= now_ms``.

    ``now_ms`` bounds the range (default: the exchange's clock). A bar is returned only when it
    is closed *on the exchange*: a later candle is in the same answer, or the exchange's clock
    has passed its close. ``exchange_time_ms`` is a time the exchange's clock is known to have
    reached (an exchange clock reading); without it ``fetch_time`` is asked when needed.
    Paginates over REST (``fetch_ohlcv``) as far as needed, validates every page and retries
    temporary errors; ccxt's exception propagates when that fails. Bars are in open-time order.
    """
    grid = CandleGrid(timeframe)
    step = grid.step
    retry: dict[str, Any] = {
        "max_retries": max_retries,
        "base_delay_s": base_delay_s,
        "max_wait_s": max_wait_s,
    }

    async def exchange_time() -> int:
        if exchange_time_ms is not None:
            return exchange_time_ms
        return int(
            await call_with_retries(
                exchange.fetch_time, retry_after=retry_after_from(exchange), **retry
            )
        )

    if now_ms is None:
        now_ms = await exchange_time()
    bars: list[Bar] = []
    async for rows in closed_candle_rows(
        exchange,
        symbol=symbol,
        timeframe=timeframe,
        start_ms=grid.ceil(since_ms),
        last_open_ms=grid.last_closed(now_ms),
        source=f"{exchange_name} {symbol} {timeframe} (REST)",
        exchange_time=exchange_time,
        limit=limit,
        **retry,
    ):
        bars.extend(
            Bar(t + step, exchange_name, symbol, timeframe, t, o, h, lo, c, v)
            for t, o, h, lo, c, v in rows
        )
    return bars
