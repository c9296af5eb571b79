"""The state builder: one function for training and serving, causal, bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.agents.observation import (
    CASH_ROW,
    COIN_ROW,
    PRICE_FEATURES,
    FeatureSchema,
    ObservationWindow,
    bar_rows,
    build_observations,
    coin_rows_between,
    metric_rows,
    observations_between,
    signal_windows,
    with_position,
)


def _random_history(rng: np.random.Generator, n: int, k: int):
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    volume = rng.lognormal(10, 1, n)
    volume[7] = 0.0  # a zero-volume candle, as in the real data
    ohlcv = np.c_[open_, high, low, close, volume]
    features = rng.normal(size=(n, k))
    ready = np.arange(n) >= 15
    return ohlcv, features, ready


def test_batch_and_bar_by_bar_states_are_bit_identical():
    ohlcv, features, ready = _random_history(np.random.default_rng(0), 120, 3)
    batch = build_observations(ohlcv, features, ready, window=16)
    window = ObservationWindow(16, 3)
    for t in range(len(ohlcv)):
        state = window.push(tuple(ohlcv[t]), features[t], bool(ready[t]))
        if t < 15:
            assert state is None
        else:
            assert state is not None and state.dtype == np.float32
            assert np.array_equal(state, batch[t]), f"bar {t}"


@pytest.mark.parametrize("bars", [5, 16, 40, 120])
def test_a_window_extended_at_once_holds_what_pushing_bar_by_bar_leaves(bars):
    ohlcv, features, ready = _random_history(np.random.default_rng(1), 120, 3)
    one_by_one, at_once = ObservationWindow(16, 3), ObservationWindow(16, 3)
    for t in range(bars):
        one_by_one.push(tuple(ohlcv[t]), features[t], bool(ready[t]))
    at_once.extend(ohlcv[:bars], features[:bars], ready[:bars])
    assert at_once.full == one_by_one.full
    assert [r.tobytes() for r in at_once._rows] == [r.tobytes() for r in one_by_one._rows]
    assert [m.tobytes() for m in at_once._metrics] == [m.tobytes() for m in one_by_one._metrics]
    t = bars  # the next state is the same too
    nxt = (tuple(ohlcv[t]), features[t], bool(ready[t])) if t < 120 else None
    if nxt is not None:
        a, b = one_by_one.push(*nxt), at_once.push(*nxt)
        assert (a is None and b is None) or np.array_equal(a, b)


def test_states_built_a_chunk_at_a_time_are_the_whole_history_s():
    ohlcv, features, ready = _random_history(np.random.default_rng(2), 120, 3)
    whole = build_observations(ohlcv, features, ready, window=16)
    rows, metrics = bar_rows(ohlcv), metric_rows(features, ready)
    coin = np.concatenate(
        [coin_rows_between(rows, metrics, 16, a, min(a + 37, 120)) for a in range(15, 120, 37)]
    )
    # the same bits (read one channel at a time) as the states built window by window
    assert coin.tobytes() == np.ascontiguousarray(whole[15:, :, COIN_ROW]).tobytes()
    by_time = coin_rows_between(rows, metrics, 16, 15, 120, time_major=True)
    assert by_time.tobytes() == whole[15:, :, COIN_ROW].transpose(0, 2, 1).copy().tobytes()
    chunks = [
        observations_between(rows, metrics, 16, a, min(a + 37, 120)) for a in range(15, 120, 37)
    ]
    assert np.array_equal(np.concatenate(chunks), whole[15:])
    with pytest.raises(ValueError, match="no full window"):
        observations_between(rows, metrics, 16, 3, 20)


def test_state_layout_price_relatives_cash_row_and_ready_mask():
    ohlcv, features, ready = _random_history(np.random.default_rng(1), 40, 2)
    states = build_observations(ohlcv, features, ready, window=8)
    assert states.shape == (40, len(PRICE_FEATURES) + 2, 2, 8)
    t = 20
    coin = states[t, :, COIN_ROW, :]
    np.testing.assert_allclose(coin[3, -1], 0.0)  # the latest close relative to itself
    np.testing.assert_allclose(coin[3, 0], (ohlcv[t - 7, 3] / ohlcv[t, 3] - 1) * 10, rtol=1e-5)
    np.testing.assert_allclose(coin[4, -1], 0.0)  # volume relative to the latest bar's
    np.testing.assert_allclose(coin[5:, -1], features[t], rtol=1e-6)
    assert not states[:, :, CASH_ROW, :].any()  # cash: relatives 1 (centred to 0), zeros
    # Before the DRU is ready its features are zeros.
    assert not states[14, 5:, COIN_ROW, -1].any()
    assert not states[:7].any()  # no full window yet


def test_state_at_t_ignores_everything_after_t():
    rng = np.random.default_rng(2)
    ohlcv, features, ready = _random_history(rng, 60, 2)
    before = build_observations(ohlcv, features, ready, window=10)
    changed_ohlcv, changed_features = ohlcv.copy(), features.copy()
    changed_ohlcv[31:] *= 3.0
    changed_features[31:] = rng.normal(size=(29, 2))
    after = build_observations(changed_ohlcv, changed_features, ready, window=10)
    assert np.array_equal(before[:31], after[:31])
    assert not np.array_equal(before[31:], after[31:])


def test_signal_and_position_channels():
    signals = np.array([0, 1, -1, 1, 0, 1], dtype=np.float32)
    channel = signal_windows(signals, 3)
    assert channel.shape == (6, 1, 2, 3)
    assert np.array_equal(channel[4, 0, COIN_ROW], [-1, 1, 0])
    assert not channel[:2].any() and not channel[:, :, CASH_ROW].any()
    state = np.zeros((4, 2, 3), dtype=np.float32)
    stacked = with_position(state, 1.0)
    assert stacked.shape == (5, 2, 3)
    assert np.array_equal(stacked[-1, CASH_ROW], [0, 0, 0])
    assert np.array_equal(stacked[-1, COIN_ROW], [1, 1, 1])


def test_schema_differences_name_each_field():
    a = FeatureSchema(("pc1", "pc2"), 32, "6h", True)
    b = FeatureSchema(("pc1",), 16, "6h", True)
    assert a.differences(a) == []
    diff = a.differences(b)
    assert any(d.startswith("metric_features") for d in diff)
    assert any(d.startswith("window: 32 != 16") for d in diff)
    assert FeatureSchema.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("window", [4, 0])
def test_networks_refuse_tiny_windows(window):
    from strategies.agents.networks import SamQNetwork

    with pytest.raises(ValueError, match="window"):
        SamQNetwork(3, window)
