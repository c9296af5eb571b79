"""Explanations of Crypto Module decisions: integrated gradients per named input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.events import Bar
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market
from bot.timeframes import to_ms
from config.schema import FeatureConfig
from strategies.agents.networks import SamQNetwork
from strategies.agents.observation import PRICE_FEATURES, FeatureSchema, build_observations
from strategies.agents.train import refine_history, train_cm
from strategies.crypto_module import CryptoModule
from strategies.explain import (
    SIGNAL_INPUT,
    attribution_frame,
    explain_decision,
    explain_history,
)
from strategies.explain_replay import evenly_spaced
from strategies.registry import LoadedCryptoModule, save_crypto_module
from tests.unit.agents.conftest import COST, TINY, jolted
from tests.unit.agents.test_crypto_module import replay_events


@pytest.fixture(scope="module")
def module(history, windows, tmp_path_factory) -> CryptoModule:
    folder = save_crypto_module(
        tmp_path_factory.mktemp("models"), train_cm(history, windows, TINY, seed=2, cost=COST)
    )
    return jolted(CryptoModule.load(folder, "ETH/USDT"), 2)


def test_attributions_add_up_to_the_margin_and_metrics_split_the_components(
    module, history
) -> None:
    model = module.model
    at = range(len(history.ohlcv) - 40, len(history.ohlcv))
    held = np.zeros(len(history.ohlcv))
    explained = explain_history(
        model, history.ohlcv, history.features, history.ready, held, at, steps=64
    )
    assert len(explained) == 40
    metrics = set(model.feature_spec.metric_ids)
    for e in explained:
        names = {name for name, _ in e.sam.inputs}
        assert names == {*PRICE_FEATURES, *metrics, SIGNAL_INPUT}
        values = dict(e.sam.inputs)
        total = sum(values.values())
        # completeness: the attributions are the margin at the state minus at the baseline
        assert abs(total - e.sam.explained) <= 0.02 * (1 + abs(e.sam.explained))
        assert abs(total - e.sam.explained - e.sam.delta) < 1e-5
        # the metrics split the components' attribution exactly (loadings are orthonormal)
        pcs = sum(v for _, v in e.sam.components)
        assert sum(values[m] for m in metrics) == pytest.approx(pcs, rel=1e-4, abs=1e-5)
        assert e.action == max(e.sam.q, key=e.sam.q.get)
        magnitudes = [abs(v) for _, v in e.sam.inputs]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert e.eam is not None and e.eam.action in ("sell", "hold", "buy")
        assert abs(e.eam.delta) <= 0.02 * (1 + sum(abs(v) for _, v in e.eam.inputs))
    frame = attribution_frame(explained)
    assert list(frame.columns) == ["ts", "coin", "action", "input", "attribution"]
    assert len(frame) == 40 * (len(PRICE_FEATURES) + len(metrics) + 1)


def test_a_live_decision_is_explained_as_the_history_explains_it(
    module, market, bars_6h, history
) -> None:
    live = jolted(CryptoModule.load(module.model.path, "ETH/USDT"), 2)
    events = replay_events(market, bars_6h)
    cut = len(events) - 30
    live.warm_up(events[:cut])
    assert explain_decision(live) is None  # nothing decided bar by bar since loading
    held = []
    for event in events[cut:]:
        if isinstance(event, Bar):
            held.append(live.position)
            live.decide(event, live.position)
        else:
            live.on_metric(event)
    mine = explain_decision(live)
    last_bar = [e for e in events if isinstance(e, Bar)][-1]
    assert mine is not None and mine.ts == last_bar.ts
    last = len(history.ohlcv) - 1
    positions = np.zeros(len(history.ohlcv))
    positions[last] = held[-1]
    (batch,) = explain_history(
        live.model,
        history.ohlcv,
        history.features,
        history.ready,
        positions,
        [last],
        ts=history.close_time.tolist(),
    )
    assert batch.ts == mine.ts and batch.action == mine.action
    for (n1, v1), (n2, v2) in zip(mine.sam.inputs, batch.sam.inputs, strict=True):
        assert n1 == n2 and v1 == pytest.approx(v2, rel=1e-4, abs=1e-6)
    as_json = mine.to_dict(top=3)
    assert as_json["action"] == mine.action and len(as_json["top"]) == 3
    assert as_json["eam"]["action"] == mine.eam.action


# -- the planted leading metric --------------------------------------------------------------


def _trained_on_the_planted_metric():
    """A daily BTC market whose one leading metric hides among six noise metrics; the DRU
    fitted on the training window (the components mix the metrics); a SAM trained (least
    squares on its margin, 150 full-batch Adam steps) to hold the coin when the state's reading
    of the planted metric is high: a Crypto Module driven by that metric."""
    torch.manual_seed(0)
    market = generate_market(
        ["BTC"],
        to_ms("2019-01-01"),
        to_ms("2020-12-31"),
        seed=5,
        leading_metrics=1,
        noise_metrics=6,
        market_metrics=0,
        scenarios=(),
    )
    (name,) = market.planted["BTC"]
    bars = resample_candles(market.candles["BTC"], "1h", "1d").frame
    split = to_ms("2020-06-01")
    history = refine_history(
        "BTC", bars, market.metrics, "1d", FeatureConfig(), (to_ms("2019-01-01"), split)
    )
    spec = history.feature_spec
    assert f"BTC:{name}" in spec.metric_ids and 0 < spec.width < len(spec.metric_ids)
    loadings = np.asarray(spec.refiner.reference_components)
    reading = (history.features @ loadings)[:, spec.metric_ids.index(f"BTC:{name}")]
    window = 8
    states = build_observations(history.ohlcv, history.features, history.ready, window)
    deciding = (np.arange(len(states)) >= window - 1) & history.ready
    train = np.flatnonzero(deciding & (history.close_time < split))
    net = SamQNetwork(states.shape[1], window, (4, 8, 8))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    data, wanted = torch.from_numpy(states[train]), torch.tensor(reading[train]).float()
    cash = torch.zeros(len(train))
    for _ in range(150):
        q = net.q_values(net.features(data), cash)
        loss = ((q[:, 1] - q[:, 0] - wanted) ** 2).mean() + 0.01 * (q.sum(dim=1) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    schema = FeatureSchema(history.feature_names, window, "1d", eam_signal=False)
    model = LoadedCryptoModule("BTC-planted", "BTC", {}, schema, spec, None, net, Path("."))
    test = np.flatnonzero(deciding & (history.close_time >= split))
    return model, history, f"BTC:{name}", reading, test


def test_the_planted_leading_metric_ranks_first_for_the_decisions_it_drives() -> None:
    model, history, planted, reading, test = _trained_on_the_planted_metric()
    explained = explain_history(
        model,
        history.ohlcv,
        history.features,
        history.ready,
        np.zeros(len(history.ohlcv)),
        test,
        ts=history.close_time.tolist(),
    )
    assert len(explained) == len(test) > 150  # out of sample: the test window
    # The decisions it drives: its reading far from its mean, and the action following it.
    strong = np.abs(reading[test]) > 1.0
    follows = np.array(
        [(e.action == "all_coin") == (r > 0) for e, r in zip(explained, reading[test], strict=True)]
    )
    assert strong.sum() > 40 and follows[strong].mean() > 0.95
    driven = strong & follows
    firsts = [e.top(1)[0][0] for e, d in zip(explained, driven, strict=True) if d]
    assert Counter(firsts)[planted] / len(firsts) > 0.95
    # and across every decision, it is the input ranked first most often
    assert Counter(e.top(1)[0][0] for e in explained).most_common(1)[0][0] == planted


def test_a_range_is_explained_at_evenly_spaced_decisions_ending_with_the_last() -> None:
    closes = list(range(100, 200))
    assert evenly_spaced(closes, 5) == [100, 125, 150, 174, 199]
    assert evenly_spaced(closes, 1) == [199]
    assert evenly_spaced(closes, 500) == closes
