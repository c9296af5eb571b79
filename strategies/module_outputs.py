"""A Crypto Module's network outputs at every bar of a known history, in a few forward passes.

Bar by bar, a module runs its EAM and its SAM once per bar, a batch of one: about half a
millisecond per network on a CPU, most of it call overhead. When the bars are known in advance
(a backtest's replay, a warm-up on stored history) :func:`network_outputs` builds the states of
every bar with the same arithmetic (only their coin rows: the cash row of every state is zeros;
:func:`~strategies.agents.observation.coin_rows_between`), runs the EAM over them a chunk at a
time, stacks its signals as the SAM's signal channel, runs the SAM's position-free body once
per bar and scores its head for both positions the module can hold (0 cash, 1 coin). What the
SAM does at a bar then depends only on the position held there: looked up bar by bar (the
position the account holds, in a replay) or scanned (the module's own last action, in a
warm-up).

Exactness. A batched pass sums in another order than a batch of one, and leaves out the cash
row's zeros (Q-values about 1e-7 of ``1 + max |Q|`` apart on this CPU), which could flip an
argmax whose two best Q-values are that close. Every bar whose margin is under
:data:`NEAR_TIE` (1e-4 of it) is settled by the bar-by-bar call itself on the whole state built
for that bar (:func:`eam_signal`, :func:`sam_action`, the very functions the bar-by-bar path
calls), so every signal and action is the bar-by-bar path's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from strategies.agents.observation import (
    COIN_ROW,
    bar_rows,
    coin_rows_between,
    metric_rows,
    observations_between,
    with_position,
)
from strategies.registry import LoadedCryptoModule

NEAR_TIE = 1e-4
"""Margins between the two best Q-values under this share of ``1 + max |Q|`` are recomputed
one bar at a time (batched and single passes differ by ~1e-7 relative)."""

CHUNK = 2048
"""Bars per forward pass (bounds the memory of a long history's states)."""


def infer_on_one_thread() -> None:
    """Have torch run this thread's inference on one thread.

    The networks are small: on one thread they run fastest (a bar-by-bar backtest on the
    default thread pool crawled) and give the same bits every time. Torch keeps the setting
    per thread, so every thread that infers calls this (module loading, warm-up, decisions).
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@torch.no_grad()
def eam_signal(model: LoadedCryptoModule, state: np.ndarray) -> int:
    """The EAM's signal (-1 sell, 0 hold, +1 buy) at one state ``(F, 2, n)``: the bar-by-bar
    call."""
    assert model.eam is not None
    return int(model.eam(torch.from_numpy(state)[None]).argmax(dim=1)) - 1


@torch.no_grad()
def sam_action(model: LoadedCryptoModule, sam_state: np.ndarray, position: float) -> int:
    """The SAM's action (0 all cash, 1 all coin) at one state ``(C, 2, n)`` holding
    ``position``: the bar-by-bar call."""
    obs = torch.from_numpy(with_position(sam_state, position))[None]
    return int(model.sam(obs).argmax(dim=1))


@dataclass(frozen=True)
class NetworkOutputs:
    """What the networks answer at every bar of a history.

    ``signals``: ``(T,)`` float32, the EAM's signal (0 before a full window, and without an
    EAM). ``actions``: ``(T, 2)`` int8, the SAM's action at bar ``t`` holding position 0 and
    position 1 (0 where the window is not full or the DRU not ready: no decision is taken
    there). ``settled``: near ties recomputed one bar at a time.
    """

    signals: np.ndarray
    actions: np.ndarray
    settled: int = 0


def _near_ties(q: torch.Tensor) -> np.ndarray:
    """Rows whose two best Q-values are within :data:`NEAR_TIE` (or not finite)."""
    top = torch.topk(q, 2, dim=1).values
    margin = (top[:, 0] - top[:, 1]).numpy()
    scale = 1.0 + q.abs().amax(dim=1).numpy()
    return ~(margin > NEAR_TIE * scale)


@torch.no_grad()
def network_outputs(
    model: LoadedCryptoModule,
    ohlcv: np.ndarray,
    features: np.ndarray,
    ready: np.ndarray,
    chunk: int = CHUNK,
) -> NetworkOutputs:
    """The EAM's signals and the SAM's actions (for both positions) at every bar of a history
    read from its first bar (``ohlcv (T, 5)``, the DRU's ``features (T, k)`` and ``ready
    (T,)``), equal to what the bar-by-bar path computes (module docstring).

    The cash row of every state is zeros (the state's layout), so the batched passes read the
    coin rows only (:func:`_eam_q_values`, :func:`_sam_body`); a near tie is settled on the
    whole state, built for its bar alone."""
    infer_on_one_thread()
    window = model.schema.window
    total = len(ohlcv)
    ready = np.asarray(ready, dtype=bool)
    signals = np.zeros(total, dtype=np.float32)
    actions = np.zeros((total, 2), dtype=np.int8)
    settled = 0
    if total < window:
        return NetworkOutputs(signals, actions)
    rows, metrics = bar_rows(ohlcv), metric_rows(features, ready)

    def state(t: int) -> np.ndarray:
        """The whole state at bar ``t``, as the bar-by-bar path builds it."""
        return observations_between(rows, metrics, window, t, t + 1)[0]

    def sam_state(t: int) -> np.ndarray:
        channel = np.zeros((1, 2, window), dtype=np.float32)
        channel[0, COIN_ROW] = signals[t - window + 1 : t + 1]
        return np.concatenate((state(t), channel)) if model.eam is not None else state(t)

    for start in range(window - 1, total, chunk):
        stop = min(total, start + chunk)
        coin = coin_rows_between(rows, metrics, window, start, stop, time_major=True)
        if model.eam is not None:
            q = _eam_q_values(model, coin)
            signal = (q.argmax(dim=1) - 1).numpy().astype(np.float32)
            for j in np.flatnonzero(_near_ties(q)):
                signal[j] = eam_signal(model, state(start + j))
                settled += 1
            signals[start:stop] = signal
            lo = start - window + 1
            channel = sliding_window_view(signals[lo:stop], window)[:, :, None]
            coin = np.concatenate((coin, channel), axis=2)
        deciding = np.flatnonzero(ready[start:stop])
        if len(deciding) == 0:
            continue
        # Past the DRU's warm-up every bar decides: a view, not a copy, of the chunk's rows
        every = len(deciding) == stop - start
        body = _sam_body(model, coin if every else coin[deciding])
        for p in (0, 1):
            q = model.sam.q_values(body, torch.full((len(deciding),), float(p)))
            action = q.argmax(dim=1).numpy().astype(np.int8)
            for j in np.flatnonzero(_near_ties(q)):
                action[j] = sam_action(model, sam_state(start + int(deciding[j])), float(p))
                settled += 1
            actions[start + deciding, p] = action
    return NetworkOutputs(signals, actions, settled)


def _eam_q_values(model: LoadedCryptoModule, coin: np.ndarray) -> torch.Tensor:
    """The EAM's Q-values ``(B, 3)`` of states whose coin rows are ``coin (B, n, F)``
    (time-major: :func:`~strategies.agents.observation.coin_rows_between`'s ``time_major``),
    their cash rows zeros. Its first convolution reads both rows of every feature as channels:
    only the coin row's channels, with their weights, go in (half the work; the sums leave out
    zeros, so they differ by rounding only). The convolutions run channels-last
    (:func:`_channels_last`)."""
    eam = model.eam
    assert eam is not None
    first, second, dense = eam.body[0], eam.body[2], eam.body[5]
    assert isinstance(first, torch.nn.Conv1d) and isinstance(second, torch.nn.Conv1d)
    assert isinstance(dense, torch.nn.Linear)
    # ReLUs in place: no second activation-sized tensor per layer (fresh ones fault their
    # pages in, which the prepare pool's threads pay for twice over)
    hidden = _conv(_channels_last(coin), first.weight[:, COIN_ROW::2], first.bias).relu_()
    hidden = _conv(hidden, second.weight, second.bias).relu_()
    return eam.head(_flat_linear(hidden, dense.weight, dense.bias).relu_())


def _sam_body(model: LoadedCryptoModule, coin: np.ndarray) -> torch.Tensor:
    """The SAM's body features ``(B, 2, c2)`` of states whose data channels' coin rows are
    ``coin (B, n, C)`` (time-major), their cash rows zeros. The body reads each row on its own,
    so the cash row's features are one row computed once, and only the coin rows go through
    the body (a third of the time), channels-last; the values differ from the stacked pass by
    rounding only."""
    body = model.sam.body
    first, second, last = body[0], body[2], body[4]
    assert all(isinstance(c, torch.nn.Conv1d) for c in (first, second, last))

    def features(rows: torch.Tensor) -> torch.Tensor:
        hidden = _conv(rows, first.weight, first.bias).relu_()
        hidden = _conv(hidden, second.weight, second.bias).relu_()
        return _flat_linear(hidden, last.weight, last.bias).relu_()

    rows = _channels_last(np.ascontiguousarray(coin))
    coin_features = features(rows)
    cash_features = features(torch.zeros_like(rows[:1]))
    return torch.stack((cash_features.expand_as(coin_features), coin_features), dim=1)


def _channels_last(rows: np.ndarray) -> torch.Tensor:
    """Time-major rows ``(B, n, C)`` as a ``(B, C, 1, n)`` tensor in channels-last memory
    order (a view, no copy): oneDNN convolves that layout several times faster than the
    channel-major one, which it reorders first (the first layer, of 10-12 channels, most)."""
    return torch.from_numpy(rows).permute(0, 2, 1).unsqueeze(2)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A ``Conv1d``'s weights applied to ``x (B, C, 1, n)`` as a 2-D convolution of height 1
    (the same sums; the channels-last layout is kept)."""
    return torch.nn.functional.conv2d(x, weight.unsqueeze(2), bias)


def _flat_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``Linear(weight)`` of ``x (B, C, 1, L)`` flattened channel by channel (``Flatten``'s
    order; ``weight`` is ``(out, C * L)`` or a spanning convolution's ``(out, C, L)``), read in
    the channels-last memory order of ``x``: the weight's columns are permuted instead (a view
    of ``x``, no copy)."""
    batch, channels, _, length = x.shape
    out = weight.shape[0]
    by_time = weight.reshape(out, channels, length).permute(0, 2, 1).reshape(out, -1)
    return torch.nn.functional.linear(x.permute(0, 2, 3, 1).reshape(batch, -1), by_time, bias)


def own_positions(outputs: NetworkOutputs, ready: np.ndarray, window: int) -> np.ndarray:
    """The positions ``(T,)`` the module takes when it reads its own last action as the
    position held (training's assumption, and the warm-up's), starting in cash: cash where
    the window is not full or the DRU not ready."""
    actions = outputs.actions.tolist()
    usable = np.asarray(ready, dtype=bool).tolist()
    positions = np.zeros(len(actions), dtype=np.int8)
    p = 0
    for t in range(window - 1, len(actions)):
        p = actions[t][p] if usable[t] else 0
        positions[t] = p
    return positions
