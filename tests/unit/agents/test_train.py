"""Training a Crypto Module: determinism, windows, checkpoints, logs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from strategies.agents.train import (
    Windows,
    decision_range,
    greedy_actions,
    train_cm,
)
from tests.unit.agents.conftest import COST, TINY


def _actions(trained, history) -> np.ndarray:
    from strategies.agents.networks import SamQNetwork
    from strategies.agents.observation import build_observations

    states = torch.from_numpy(
        build_observations(history.ohlcv, history.features, history.ready, TINY.window)
    )
    if trained.eam is not None:
        from strategies.agents.networks import EamQNetwork
        from strategies.agents.observation import signal_windows
        from strategies.agents.train import eam_signals

        eam = EamQNetwork(**trained.network_args["eam"])
        eam.load_state_dict(trained.eam.state_dict)
        signals = eam_signals(eam, states, TINY.window)
        states = torch.cat((states, torch.from_numpy(signal_windows(signals, TINY.window))), 1)
    args = trained.network_args["sam"]
    sam = SamQNetwork(args["in_channels"], args["window"], tuple(args["channels"]))
    sam.load_state_dict(trained.sam.state_dict)
    return greedy_actions(sam, states[TINY.window - 1 :], "sam")


def test_same_seed_same_data_gives_identical_actions(history, windows):
    first = train_cm(history, windows, TINY, seed=5, cost=COST)
    second = train_cm(history, windows, TINY, seed=5, cost=COST)
    assert np.array_equal(_actions(first, history), _actions(second, history))
    for name, tensor in first.sam.state_dict.items():
        assert torch.equal(tensor, second.sam.state_dict[name]), name
    assert first.scores == second.scores
    other = train_cm(history, windows, TINY, seed=6, cost=COST)
    assert any(not torch.equal(t, other.sam.state_dict[k]) for k, t in first.sam.state_dict.items())


def test_training_keeps_the_best_validation_checkpoint_and_logs_it(history, windows, tmp_path):
    log_path = tmp_path / "log.jsonl"
    trained = train_cm(history, windows, TINY, seed=1, cost=COST, log_path=log_path)
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    sam_rows = [r for r in rows if r["agent"] == "sam"]
    assert {r["agent"] for r in rows} == {"eam", "sam"}
    assert {"loss", "validation", "epsilon", "env_steps", "updates"} <= set(sam_rows[0])
    best = max(r["validation"] for r in sam_rows)
    assert trained.sam.best_validation == pytest.approx(best)
    assert trained.scores["validation"]["sam"] == pytest.approx(best)
    assert set(trained.scores["test"]) == {"eam", "sam", "buy_and_hold"}
    assert trained.sam.updates > 0 and trained.eam is not None and trained.eam.updates > 0


def test_without_eam_the_sam_reads_no_signal_channel(history, windows):
    trained = train_cm(
        history, windows, TINY.model_copy(update={"use_eam": False}), seed=1, cost=COST
    )
    assert trained.eam is None and "eam" not in trained.network_args
    assert trained.network_args["sam"]["in_channels"] == trained.schema.n_features
    assert not trained.schema.eam_signal


def test_decision_ranges_keep_rewards_inside_their_window(history, windows):
    close = history.close_time
    for span in (windows.train, windows.validation, windows.test):
        decisions = decision_range(close, span, 8)
        assert close[decisions.first] >= span[0]
        assert close[decisions.last] <= span[1]  # the last reward is earned by the end
        assert decisions.last + 1 >= len(close) or close[decisions.last + 1] > span[1]
    train = decision_range(close, windows.train, 8)
    validation = decision_range(close, windows.validation, 8)
    assert train.last <= validation.first


def test_a_window_without_bars_is_refused_with_the_data_range(history):
    with pytest.raises(ValueError, match="no decisions"):
        decision_range(history.close_time, (0, 1_000), 8)
    assert isinstance(Windows(train=(0, 1), validation=(1, 2)).test, type(None))


def test_checkpoint_selection_can_be_kept_from_keeping_an_untrained_network(history, windows):
    # A budget whose every evaluation but the last comes before the first gradient update:
    # the paper's selection may keep the initial network; the fix keeps only trained ones.
    late = TINY.sam.model_copy(
        update={"learning_starts": 1_200, "eval_interval": 10, "trained_checkpoints_only": True}
    )
    params = TINY.model_copy(update={"use_eam": False, "sam": late})
    trained = train_cm(history, windows, params, seed=4, cost=COST)
    assert trained.sam.best_env_steps > late.learning_starts
    assert trained.sam.updates > 0
