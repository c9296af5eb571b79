"""The CryptoModule handler: inference only, same states and decisions as training's env."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bot.events import Bar, Metric, ModuleDecision
from bot.timeframes import DAY_MS, HOUR_MS
from strategies.agents.observation import build_observations, signal_windows
from strategies.agents.train import eam_signals, train_cm
from strategies.crypto_module import CryptoModule
from strategies.registry import save_crypto_module
from tests.unit.agents.conftest import COST, TINY, jolted, module_state


@pytest.fixture(scope="module")
def folder(history, windows, tmp_path_factory):
    trained = train_cm(history, windows, TINY, seed=2, cost=COST)
    return save_crypto_module(tmp_path_factory.mktemp("models"), trained)


def replay_events(market, bars):
    """Bars (published at close) and metrics (at known time, 1h after their day), in order."""
    metrics = market.metrics
    known = metrics["observed_at"].to_numpy() + DAY_MS + HOUR_MS
    events = [
        (int(k), 0, Metric(int(k), a, n, int(o), float(v)))
        for k, a, n, o, v in zip(
            known,
            metrics["asset"],
            metrics["name"],
            metrics["observed_at"],
            metrics["value"],
            strict=True,
        )
    ]
    step = 6 * HOUR_MS
    for row in bars.itertuples(index=False):
        ts = int(row.open_time) + step
        bar = Bar(
            ts,
            "synthetic",
            "ETH/USDT",
            "6h",
            int(row.open_time),
            row.open,
            row.high,
            row.low,
            row.close,
            row.volume,
        )
        events.append((ts, 1, bar))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in events]


def batch_decisions(model, history) -> np.ndarray:
    """What the training code would decide at every bar: the env's states, greedy SAM."""
    window = model.schema.window
    states = torch.from_numpy(
        build_observations(history.ohlcv, history.features, history.ready, window)
    )
    signals = eam_signals(model.eam, states, window)
    states = torch.cat((states, torch.from_numpy(signal_windows(signals, window))), 1)
    with torch.no_grad():
        features = model.sam.features(states)
        zeros = torch.zeros(len(states))
        q = torch.stack(
            (model.sam.q_values(features, zeros), model.sam.q_values(features, zeros + 1)), 1
        )
    actions, position = np.zeros(len(states), dtype=int), 0
    for t in range(window - 1, len(states)):
        position = int(q[t, position].argmax()) if history.ready[t] else 0
        actions[t] = position
    return actions


def test_handler_decides_as_the_training_env_would(folder, market, bars_6h, history):
    decisions: list[ModuleDecision] = []
    module = CryptoModule.load(folder, "ETH/USDT")
    signals, ready = [], []
    for event in replay_events(market, bars_6h):
        if isinstance(event, Metric):
            module.on_metric(event)
            continue
        decision = module.decide(event)
        assert decision is not None
        decisions.append(decision)
        signals.append(module.signal)
        ready.append(module.ready)
    assert len(decisions) == len(bars_6h)
    assert [d.ts for d in decisions] == history.close_time.tolist()
    assert all(d.module_id == folder.name and d.coin == "ETH" for d in decisions)
    assert all((d.cash, d.coin_weight) in ((1.0, 0.0), (0.0, 1.0)) for d in decisions)
    handler_actions = np.array([d.coin_weight for d in decisions], dtype=int)
    expected = batch_decisions(module.model, history)
    assert np.array_equal(handler_actions, expected)
    assert not ready[0] and ready[-1]
    states = build_observations(history.ohlcv, history.features, history.ready, TINY.window)
    expected_signals = eam_signals(module.model.eam, torch.from_numpy(states), TINY.window)
    assert np.array_equal(np.array(signals, dtype=np.float32), expected_signals)


def test_handler_is_inference_only_and_ignores_other_symbols(folder):
    module = CryptoModule.load(folder, "ETH/USDT")
    assert not hasattr(module, "optimizer") and not hasattr(module.model, "optimizer")
    assert not module.model.sam.training
    other = Bar(6 * HOUR_MS, "synthetic", "BTC/USDT", "6h", 0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert module.decide(other) is None


def test_warm_up_fills_the_window_then_decisions_come_from_the_networks(folder, market, bars_6h):
    events = replay_events(market, bars_6h)
    module = CryptoModule.load(folder, "ETH/USDT")
    split = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, Bar) and e.ts > bars_6h["open_time"].iloc[300]
    )
    assert module.warm_up(events[:split]) > TINY.window
    decisions = []
    for event in events[split:]:
        if isinstance(event, Metric):
            module.on_metric(event)
        else:
            decisions.append(module.decide(event))
    assert decisions and all(d is not None for d in decisions) and module.ready


def fresh(folder, seed: int = 2) -> CryptoModule:
    return jolted(CryptoModule.load(folder, "ETH/USDT"), seed)


def decide_all(module: CryptoModule, events, positions=None, *, bulk: bool = False) -> list:
    """Decisions (with signal and readiness) over ``events``; ``positions(i)`` gives the
    position held at the ``i``-th bar (None: the module's own last action). ``bulk``: the
    metrics between two bars go in one ``on_metrics`` call, unfiltered (as the vote hands
    an instant's metrics), instead of one ``on_metric`` call each."""
    out: list = []
    given: list[Metric] = []
    for event in events:
        if isinstance(event, Metric):
            if bulk:
                given.append(event)
            else:
                module.on_metric(event)
            continue
        if given:
            module.on_metrics(tuple(given))
            given = []
        position = None if positions is None else positions(len(out))
        out.append((module.decide(event, position), module.signal, module.ready))
    if given:
        module.on_metrics(tuple(given))
    return out


@pytest.mark.parametrize("split_bar", [3, 900])
def test_warm_up_at_once_leaves_the_state_one_by_one_leaves(
    folder, market, bars_6h, split_bar
) -> None:
    events = replay_events(market, bars_6h)
    split = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, Bar) and e.ts > bars_6h["open_time"].iloc[split_bar]
    )
    one_by_one, at_once = fresh(folder), fresh(folder)
    count = one_by_one.warm_up(events[:split], at_once=False)
    assert at_once.warm_up(events[:split]) == count == split_bar
    assert module_state(at_once) == module_state(one_by_one)
    assert not at_once.fresh and at_once._plan is None
    later_a, later_b = decide_all(one_by_one, events[split:]), decide_all(at_once, events[split:])
    assert later_a == later_b
    assert {d.coin_weight for d, _, _ in later_a} == {0.0, 1.0}  # the module trades
    assert module_state(at_once) == module_state(one_by_one)


def test_warm_up_of_events_out_of_publish_order_reads_them_one_by_one(
    folder, market, bars_6h
) -> None:
    events = replay_events(market, bars_6h)[:3000]
    # Every metric after every bar: one by one, each waits for a bar that never comes.
    shuffled = [e for e in events if isinstance(e, Bar)] + [
        e for e in events if isinstance(e, Metric)
    ]
    one_by_one, at_once = fresh(folder), fresh(folder)
    one_by_one.warm_up(shuffled, at_once=False)
    at_once.warm_up(shuffled)
    assert module_state(at_once) == module_state(one_by_one)
    assert one_by_one._features is not None and one_by_one._features._pending


@pytest.mark.parametrize("bulk", [False, True], ids=["one-metric-at-a-time", "per-instant"])
def test_a_module_off_its_plan_catches_up_and_decides_as_bar_by_bar(
    folder, market, bars_6h, history, bulk
) -> None:
    events = replay_events(market, bars_6h)
    planned = 700  # the plan covers the first 700 bars; the rest come unforeseen
    metrics = market.metrics.assign(
        known_at=market.metrics["observed_at"] + DAY_MS + HOUR_MS
    ).sort_values("known_at", kind="stable")
    metrics = metrics[["known_at", "asset", "name", "observed_at", "value"]]
    metrics = metrics[metrics["known_at"] <= int(history.close_time[planned - 1])]

    def held(i: int) -> float:  # a position the account might hold: changes every 5 bars
        return float((i // 5) % 2)

    prepared, bar_by_bar = fresh(folder), fresh(folder)
    assert prepared.prepare("6h", history.open_time[:planned], history.ohlcv[:planned], metrics)
    assert not prepared.prepare("6h", history.open_time, history.ohlcv, metrics)  # not fresh
    assert {(m.asset, m.name) for m in events if isinstance(m, Metric)} > prepared.metric_keys
    expected = decide_all(bar_by_bar, events, held)
    assert decide_all(prepared, events, held, bulk=bulk) == expected
    assert prepared._plan is None  # it left the plan where it ran out
    assert module_state(prepared) == module_state(bar_by_bar)

    # A position other than 0 or 1 was not scored ahead: that bar is decided bar by bar.
    prepared, bar_by_bar = fresh(folder), fresh(folder)
    prepared.prepare("6h", history.open_time, history.ohlcv, metrics)

    def odd(i: int) -> float:
        return 0.5 if i == 400 else held(i)

    expected = decide_all(bar_by_bar, events, odd, bulk=bulk)
    assert decide_all(prepared, events, odd, bulk=bulk) == expected
    assert module_state(prepared) == module_state(bar_by_bar)
    assert not fresh(folder).prepare("1h", history.open_time, history.ohlcv, metrics)
