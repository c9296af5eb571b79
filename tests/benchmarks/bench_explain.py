"""Cost of explaining every live decision, against the decision itself.

A Crypto Module of the default size (``[agents]`` defaults: window 32, EAM 16 channels and 64
hidden, SAM channels 16/32/32; random weights, since the cost does not depend on training) with
the DRU fitted on a synthetic coin's metrics (10 selected metrics, their components), decides
bar by bar on hourly bars as the daemon does (``CryptoModule.decide``: feature state,
observation, EAM, SAM). After each decision, :func:`strategies.explain.explain_decision`
explains it (integrated gradients of the SAM's and the EAM's margins, :data:`STEPS` points,
per price channel, component and metric). Printed: milliseconds per decision and per
explanation (median over the bars), and their ratio; also the SAM alone (``with_eam=False``).

Run: ``.venv/bin/python tests/benchmarks/bench_explain.py``
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.events import Bar, Metric
from bot.feed.synthetic import generate_market
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from config.schema import FeatureConfig
from strategies.agents.networks import build_eam, build_sam
from strategies.agents.observation import FeatureSchema
from strategies.agents.train import refine_history
from strategies.crypto_module import CryptoModule
from strategies.explain import STEPS, explain_decision, explain_states
from strategies.module_outputs import infer_on_one_thread
from strategies.registry import LoadedCryptoModule

BARS = 400
"""Decisions timed (after a warm-up of the rest of the history)."""


def events(market, coin: str) -> list:
    """The coin's hourly bars (at close) and every metric (at its known time), in order."""
    frame = market.metrics
    known = frame["observed_at"].to_numpy() + DAY_MS + HOUR_MS
    out = [
        (int(k), 0, Metric(int(k), a, n, int(o), float(v)))
        for k, a, n, o, v in zip(
            known, frame["asset"], frame["name"], frame["observed_at"], frame["value"], strict=True
        )
    ]
    for row in market.candles[coin].itertuples(index=False):
        ts = int(row.open_time) + HOUR_MS
        bar = Bar(
            ts, "synthetic", f"{coin}/USDT", "1h", int(row.open_time), row.open, row.high,
            row.low, row.close, row.volume,
        )  # fmt: skip
        out.append((ts, 1, bar))
    out.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in out]


def main() -> None:
    infer_on_one_thread()
    market = generate_market(["ETH"], to_ms("2023-01-01"), to_ms("2023-09-01"), seed=3)
    history = refine_history(
        "ETH",
        market.candles["ETH"],
        market.metrics,
        "1h",
        FeatureConfig(),
        (to_ms("2023-01-01"), to_ms("2023-06-01")),
        market_wide_assets=["MARKET"],
    )
    spec = history.feature_spec
    window, k = 32, spec.width
    schema = FeatureSchema(history.feature_names, window, "1h", eam_signal=True)
    eam = build_eam(5 + k, window, 16, 64).eval()
    sam = build_sam(5 + k + 1, window, (16, 32, 32)).eval()
    model = LoadedCryptoModule("ETH-bench", "ETH", {}, schema, spec, eam, sam, Path("."))
    module = CryptoModule(model, "ETH/USDT")
    stream = events(market, "ETH")
    bars = [i for i, e in enumerate(stream) if isinstance(e, Bar)]
    cut = bars[-BARS]
    module.warm_up(stream[:cut])
    decide, explain, sam_only = [], [], []
    for event in stream[cut:]:
        if not isinstance(event, Bar):
            module.on_metric(event)
            continue
        started = time.perf_counter()
        module.decide(event, module.position)
        decide.append(time.perf_counter() - started)
        started = time.perf_counter()
        explained = explain_decision(module)
        explain.append(time.perf_counter() - started)
        inputs = module.last_inputs
        assert explained is not None and inputs is not None
        started = time.perf_counter()
        explain_states(
            model,
            inputs.state[None],
            inputs.sam_state[-1, 1][None],
            np.array([inputs.position]),
            with_eam=False,
        )
        sam_only.append(time.perf_counter() - started)
    d, e, s = (statistics.median(x) * 1000 for x in (decide, explain, sam_only))
    print(f"module: window {window}, {k} components of {len(spec.metric_ids)} metrics, EAM + SAM")
    print(f"{len(decide)} decisions, {STEPS} integration points per network")
    print(f"decision (CryptoModule.decide): {d:.3f} ms median")
    print(f"explanation (SAM + EAM):        {e:.3f} ms median  ratio {e / d:.1f}x the decision")
    print(f"explanation (SAM only):         {s:.3f} ms median  ratio {s / d:.1f}x the decision")
    top = ", ".join(f"{n} {v:+.3f}" for n, v in explained.top(3))
    print(f"last: {explained.action}; top inputs: {top}")


if __name__ == "__main__":
    main()
