"""Network outputs over a whole history at once: the bar-by-bar calls' answers, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies import module_outputs
from strategies.agents.observation import CASH_ROW, COIN_ROW, build_observations
from strategies.agents.train import train_cm
from strategies.crypto_module import CryptoModule
from strategies.module_outputs import (
    eam_signal,
    infer_on_one_thread,
    network_outputs,
    own_positions,
    sam_action,
)
from strategies.registry import save_crypto_module
from tests.unit.agents.conftest import COST, TINY, jolted


@pytest.fixture(scope="module")
def model(history, windows, tmp_path_factory):
    folder = save_crypto_module(
        tmp_path_factory.mktemp("models"), train_cm(history, windows, TINY, seed=2, cost=COST)
    )
    return jolted(CryptoModule.load(folder, "ETH/USDT"), 2).model


def bar_by_bar(model, history):
    """Signals and both positions' actions from the single-bar calls, bar by bar."""
    window = model.schema.window
    states = build_observations(history.ohlcv, history.features, history.ready, window)
    signals = np.zeros(len(states), dtype=np.float32)
    actions = np.zeros((len(states), 2), dtype=np.int8)
    for t in range(window - 1, len(states)):
        signals[t] = eam_signal(model, states[t])
        channel = np.zeros((1, 2, window), dtype=np.float32)
        channel[0, COIN_ROW] = signals[t - window + 1 : t + 1]
        sam_state = np.concatenate((states[t], channel))
        if history.ready[t]:
            actions[t] = [sam_action(model, sam_state, p) for p in (0.0, 1.0)]
    return signals, actions


def test_outputs_at_once_are_the_single_bar_calls_whatever_the_chunks(model, history) -> None:
    signals, actions = bar_by_bar(model, history)
    for chunk in (37, 2048):  # chunk borders cut through the signal windows
        outputs = network_outputs(model, history.ohlcv, history.features, history.ready, chunk)
        assert np.array_equal(outputs.signals, signals)
        assert np.array_equal(outputs.actions, actions)
    assert len(np.unique(signals)) == 3 and (actions[:, 0] != actions[:, 1]).any()
    short = network_outputs(model, history.ohlcv[:5], history.features[:5], history.ready[:5])
    assert not short.signals.any() and not short.actions.any()


def test_near_ties_are_settled_by_the_single_bar_calls(model, history, monkeypatch) -> None:
    calls = {"eam": 0, "sam": 0}

    def eam(model, state):
        calls["eam"] += 1
        return 1

    def sam(model, state, position):
        calls["sam"] += 1
        return 1

    monkeypatch.setattr(module_outputs, "NEAR_TIE", float("inf"))  # every bar is a near tie
    monkeypatch.setattr(module_outputs, "eam_signal", eam)
    monkeypatch.setattr(module_outputs, "sam_action", sam)
    outputs = network_outputs(model, history.ohlcv, history.features, history.ready, 100)
    window, ready = model.schema.window, history.ready
    full = len(ready) - window + 1
    assert calls == {"eam": full, "sam": 2 * int(ready[window - 1 :].sum())}
    assert (outputs.signals[window - 1 :] == 1).all()
    assert (outputs.actions[window - 1 :][ready[window - 1 :]] == 1).all()
    assert outputs.settled == sum(calls.values())


def test_own_positions_follow_the_module_s_last_action(model, history) -> None:
    outputs = network_outputs(model, history.ohlcv, history.features, history.ready)
    positions = own_positions(outputs, history.ready, model.schema.window)
    p, window = 0, model.schema.window
    for t in range(len(positions)):
        p = int(outputs.actions[t, p]) if t >= window - 1 and history.ready[t] else 0
        assert positions[t] == p
    assert 0 < positions.mean() < 1


def test_inference_runs_on_one_thread() -> None:
    torch.set_num_threads(2)
    infer_on_one_thread()
    assert torch.get_num_threads() == 1


def test_the_coin_row_passes_match_the_networks_up_to_rounding(model, history) -> None:
    window = model.schema.window
    states = build_observations(history.ohlcv, history.features, history.ready, window)
    states = states[window - 1 :]
    assert not states[:, :, CASH_ROW].any()  # what reading the coin rows only relies on
    coin = np.ascontiguousarray(states[:, :, COIN_ROW].transpose(0, 2, 1))  # time-major
    with torch.no_grad():
        whole = model.eam(torch.from_numpy(states))
        assert torch.allclose(module_outputs._eam_q_values(model, coin), whole, atol=1e-5)
        data = np.concatenate((states, np.zeros_like(states[:, :1])), axis=1)
        body = model.sam.features(torch.from_numpy(data))
        rows = np.ascontiguousarray(data[:, :, COIN_ROW].transpose(0, 2, 1))
        shortcut = module_outputs._sam_body(model, rows)
        assert torch.allclose(shortcut, body, atol=1e-5)
