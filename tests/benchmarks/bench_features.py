"""DRU benchmark: batch features for 14 coins x 2 years of 6h bars, and the bar-by-bar cost.

Run it as a script from the repository root::

    .venv/bin/python tests/benchmarks/bench_features.py

It uses the toy market of the DRU tests (generated here, never ``../shared/data``): 14 coins, 730
days of 6h bars, 10 leading + 6 noise metrics per coin and 3 market-wide ones, with gaps and four
different publication lags; each coin's spec is fitted on the first year and keeps 10 metrics.
Printed: fit time, batch time (best of 3), incremental cost per bar per coin (all events of all
coins replayed in publish order through 14 ``FeatureState`` objects), the split between bars
where the refiner steps and bars where it carries forward, and the incremental/batch ratio. It
also checks that both paths gave bit-identical features.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.events import Bar, Metric
from bot.timeframes import DAY_MS
from config.schema import FeatureConfig
from strategies.features import (
    FeatureState,
    available_metrics,
    candidate_pool,
    compute_features,
    daily_closes,
    fit_feature_spec,
)
from tests.unit.features.toy_market import MARKET_ASSET, TIMEFRAME_MS, toy_market

COINS = tuple(f"C{i:02d}" for i in range(14))
DAYS = 730


def main() -> None:
    market = toy_market(COINS, n_days=DAYS, leading=10, noise=6, market=3, seed=1)
    available = available_metrics(market.metrics)
    cfg = FeatureConfig()

    started = time.perf_counter()
    specs = {
        coin: fit_feature_spec(
            coin,
            daily_closes(market.bars[coin], TIMEFRAME_MS),
            market.metrics,
            candidate_pool(coin, available, market_wide_assets=[MARKET_ASSET]),
            cfg,
            market.start_ms,
            market.start_ms + 365 * DAY_MS,
        )
        for coin in COINS
    }
    fit_s = time.perf_counter() - started
    n_bars = len(market.bars[COINS[0]])
    widths = sorted({spec.width for spec in specs.values()})
    print(f"{len(COINS)} coins x {DAYS} days = {n_bars} bars of 6h each, ")
    print(f"  {len(specs[COINS[0]].metric_ids)} selected metrics per coin, k in {widths}")
    print(f"fit (selection + refiner, 1-year window), 14 coins: {fit_s:8.3f} s")

    batch_s, batch = float("inf"), {}
    for _ in range(3):
        started = time.perf_counter()
        batch = {
            coin: compute_features(specs[coin], market.bars[coin], market.metrics, TIMEFRAME_MS)
            for coin in COINS
        }
        batch_s = min(batch_s, time.perf_counter() - started)
    print(f"batch compute_features, 14 coins x 2 years:      {batch_s:8.3f} s")

    events = _publish_order(market)
    states = {coin: FeatureState(specs[coin], TIMEFRAME_MS) for coin in COINS}
    outputs: dict[str, list[np.ndarray]] = {coin: [] for coin in COINS}
    step_ns, carry_ns, steps = 0, 0, 0
    started = time.perf_counter()
    for coin, event in events:
        if isinstance(event, Metric):
            for state in states.values():
                state.on_metric(event)
            continue
        state = states[coin]
        before = state._refiner.days_seen, state.explained_variance
        t0 = time.perf_counter_ns()
        outputs[coin].append(state.on_bar(event))
        elapsed = time.perf_counter_ns() - t0
        if (state._refiner.days_seen, state.explained_variance) != before or (
            len(outputs[coin]) > 1 and not np.array_equal(outputs[coin][-1], outputs[coin][-2])
        ):
            step_ns, steps = step_ns + elapsed, steps + 1
        else:
            carry_ns += elapsed
    incremental_s = time.perf_counter() - started
    bar_calls = n_bars * len(COINS)
    print(
        f"incremental, all events (metrics to 14 states):   {incremental_s:8.3f} s, "
        f"{incremental_s / bar_calls * 1e6:7.1f} us per bar per coin"
    )
    print(
        f"  on_bar alone: {(step_ns + carry_ns) / bar_calls / 1e3:7.1f} us per bar per coin; "
        f"{step_ns / max(steps, 1) / 1e3:.1f} us at a step ({steps} bars), "
        f"{carry_ns / max(bar_calls - steps, 1) / 1e3:.2f} us carrying forward"
    )
    print(f"incremental total / batch: {incremental_s / batch_s:.2f}")

    identical = all(np.array_equal(np.array(outputs[coin]), batch[coin].features) for coin in COINS)
    print(f"batch == incremental (bit-identical): {identical}")
    if not identical:
        raise SystemExit(1)


def _publish_order(market: object) -> list[tuple[str, Bar | Metric]]:
    """Every metric and bar as an event, by time; a metric known at a bar's close goes first."""
    keyed: list[tuple[int, int, str, Bar | Metric]] = []
    frame = market.metrics.sort_values("known_at", kind="stable")
    for asset, name, observed, known, value in frame[
        ["asset", "name", "observed_at", "known_at", "value"]
    ].itertuples(index=False, name=None):
        keyed.append((int(known), 0, "", Metric(int(known), asset, name, int(observed), value)))
    for coin, bars in market.bars.items():
        for row in bars.itertuples(index=False, name=None):
            close = int(row[0]) + TIMEFRAME_MS
            keyed.append((close, 1, coin, Bar(close, "toy", f"{coin}/USDT", "6h", *row)))
    keyed.sort(key=lambda item: (item[0], item[1], item[2]))
    return [(coin, event) for _, _, coin, event in keyed]


if __name__ == "__main__":
    main()
