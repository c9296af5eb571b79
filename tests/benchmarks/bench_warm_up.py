"""Daemon start-up: every module warmed on stored history, config/testnet.toml's size.

config/testnet.toml trades 4 coins (BTC, ETH, BNB, LINK) on 15m bars and warms each module on
``[live].warmup_days = 240`` days of stored history: 23,040 bars per coin. This script stores a
synthetic market of that shape (hourly candles split into quarter hours, daily metrics), trains
one module per coin with the testnet config's agent sizes (the ``[agents]`` defaults: window 32,
SAM channels 16/32/32, EAM 16 channels and 64 hidden; a small training budget, since warm-up
time does not depend on how good a module is), then times what the daemon runs at start:
``strategies.live.build_vote`` (read each coin's history from the stores, load its module, warm
it up at once). For comparison it warms one coin's module one event at a time on the same
history (the path every warm-up took before) and checks both modules end in the same state.

Target (issue 15): all 4 modules warm in at most 10 s.

Run: ``.venv/bin/python tests/benchmarks/bench_warm_up.py``
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backtest.pipeline import read_histories, train_modules
from bot.feed.synthetic import daily_known_at, generate_market
from bot.store import MarketStore, MetricStore
from bot.timeframes import DAY_MS, to_ms
from config.loader import bundled_config_path, load_config
from config.schema import DataConfig, DateWindow, DQNParams, TrainingConfig, WindowsConfig
from strategies.crypto_module import CryptoModule
from strategies.live import build_vote, history_events
from tests.unit.agents.conftest import module_state

SMALL = DQNParams(total_env_steps=2_000, learning_starts=200, eval_interval=50)
START, END = "2024-01-01", "2024-11-05"  # ~100 days to train on, then 240 days of warm-up


def quarter_hours(hourly: pd.DataFrame) -> pd.DataFrame:
    """Each hourly candle as four 15m candles walking from its open to its close (its high and
    low reached in the second and third), a quarter of its volume each."""
    o, h, lo, c, v = (hourly[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    parts = []
    for q in range(4):
        first, last = o + (c - o) * q / 4, o + (c - o) * (q + 1) / 4
        top = np.maximum(first, last) + (h - np.maximum(o, c)) * (q == 1)
        bottom = np.minimum(first, last) - (np.minimum(o, c) - lo) * (q == 2)
        parts.append(
            pd.DataFrame(
                {
                    "open_time": hourly["open_time"].to_numpy() + q * 15 * 60_000,
                    "open": first,
                    "high": top,
                    "low": bottom,
                    "close": last,
                    "volume": v / 4,
                }
            )
        )
    return pd.concat(parts).sort_values("open_time", kind="stable").reset_index(drop=True)


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-warm-up-"))
    testnet = load_config(bundled_config_path("testnet.toml"))
    coins = testnet.market.coins
    cfg = testnet.model_copy(
        update={
            "data": DataConfig(dir=root / "data"),
            "market": testnet.market.model_copy(update={"exchange": "synthetic"}),
            "windows": WindowsConfig(
                train=DateWindow(start="2024-01-01", end="2024-03-31"),
                validation=DateWindow(start="2024-04-01", end="2024-04-30"),
                test=DateWindow(start="2024-05-01", end="2024-11-04"),
            ),
            "agents": testnet.agents.model_copy(
                update={"eam": SMALL.model_copy(update={"gamma": 0.0}), "sam": SMALL}
            ),
            "training": TrainingConfig(seeds=(1,), models_dir=root / "models"),
        }
    )
    agents = cfg.agents
    print(
        f"config/testnet.toml: {', '.join(coins)} on {cfg.market.timeframe} bars, warm-up "
        f"{cfg.live.warmup_days} days; agents window {agents.window}, SAM channels "
        f"{agents.sam.channels}, EAM channels {agents.eam.channels[0]} hidden {agents.eam.hidden}"
    )
    market = generate_market(list(coins), to_ms(START), to_ms(END), seed=4)
    async with (
        await MarketStore.open(cfg.data.market_path) as store,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        for coin in coins:
            frame = quarter_hours(market.candles[coin])
            await store.upsert_frame("synthetic", cfg.market.symbol(coin), "15m", frame)
        known = daily_known_at(market.metrics["observed_at"], cfg.metrics.publication_lag_ms)
        await metrics.upsert_frame(market.metrics.assign(known_at=known), source="synthetic")
        started = time.perf_counter()
        histories = await read_histories(cfg, store, metrics, coins)
        folders = train_modules(cfg, histories, (1,), cfg.training.models_dir)
        print(f"trained {len(folders)} modules in {time.perf_counter() - started:.0f} s")
        cfg = cfg.model_copy(
            update={
                "live": cfg.live.model_copy(
                    update={"models": {c: folders[c, 1].name for c in coins}}
                )
            }
        )
        last = await store.last_open_time("synthetic", cfg.market.symbol(coins[0]), "15m")
        assert last is not None
        now = last + 15 * 60_000

        started = time.perf_counter()
        vote, _ = await build_vote(cfg, store, metrics, now)
        at_once = time.perf_counter() - started
        bars = {c: vote.module(c)._bars for c in coins}  # type: ignore[attr-defined]

        coin = coins[0]
        since = now - cfg.live.warmup_days * DAY_MS
        started = time.perf_counter()
        events = await history_events(cfg, store, metrics, coin, since, now)
        reading = time.perf_counter() - started
    one = CryptoModule.load(folders[coin, 1], cfg.market.symbol(coin))
    started = time.perf_counter()
    one.warm_up(events, at_once=False)
    one_by_one = time.perf_counter() - started
    alone = CryptoModule.load(folders[coin, 1], cfg.market.symbol(coin))
    started = time.perf_counter()
    alone.warm_up(events)
    one_at_once = time.perf_counter() - started
    same = module_state(one) == module_state(vote.module(coin))  # type: ignore[arg-type]
    same = same and module_state(alone) == module_state(one)

    total = sum(bars.values())
    print(f"history: {', '.join(f'{c} {n:,}' for c, n in bars.items())} 15m bars ({total:,})")
    print(
        f"build_vote, 4 modules warmed at once  : {at_once:6.2f} s  (target <= 10 s; reading "
        f"the stores, loading and warming; {coin}'s events alone read in {reading:.2f} s)"
    )
    print(
        f"{coin} warmed one event at a time       : {one_by_one:6.2f} s  for {bars[coin]:,} bars "
        f"({one_by_one / bars[coin] * 1e3:.2f} ms a bar; 4 coins ~ {4 * one_by_one:.0f} s)"
    )
    print(
        f"{coin} warmed at once                   : {one_at_once:6.2f} s  "
        f"(one by one / at once: {one_by_one / one_at_once:.0f}x)"
    )
    print(f"{coin}: state after the warm-up at once == one by one: {same}")
    if not same:
        raise SystemExit("the warm-up at once left another state than one by one")


if __name__ == "__main__":
    asyncio.run(main())
