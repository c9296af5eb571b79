"""Why a Crypto Module decided what it did: integrated gradients on its Q-networks, per named input.

A Crypto Module's decision at a bar close is the SAM's action (all cash or all coin), read from
a state of price channels (open, high, low, close, volume relative to the latest bar), the DRU's
principal components of the selected on-chain metrics, and the EAM's signals (see
:mod:`strategies.agents.observation`). :func:`explain_decision` (the live module's last decision)
and :func:`explain_history` (many bars of a history at once, for reports and ``cryptorlpm
explain``) say which of those inputs drove it:

* **What is attributed.** By default the chosen action's *margin*: its Q-value minus the mean of
  the other actions' (for the SAM, ``Q(chosen) - Q(other)``). A DQN's Q-values share a large
  state-value part that moves every action alike; the margin is what made the action chosen.
  ``target="q"`` attributes the chosen action's Q-value itself.
* **How.** Integrated gradients (captum's :class:`~captum.attr.IntegratedGradients`,
  Gauss-Legendre, :data:`STEPS` points) from the all-zero state: every price relative 0 (flat
  prices, volume equal to the latest bar's), every component 0 (the metrics at their rolling
  mean), no EAM signal. The position held is the network's input too but is kept as it is (it
  is what the account holds, not a reason). The attributions of a decision add up to the
  margin at the state minus the margin at that baseline (``delta`` is what the numerical
  integral misses).
* **Per named input.** Each channel's attributions are summed over the window: ``open``,
  ``high``, ``low``, ``close``, ``volume``, ``EAM signal``, and ``pc1 .. pck``. A component is a
  linear map of the metrics' z-scores, ``pc = L z`` with the loadings ``L`` (orthonormal rows);
  the state's components are read as the metric vector ``x = L^T pc`` (the part of the z-scores
  the components carry), so the same integral, taken in metric space, gives every metric
  (``BTC:active_addresses``) its exact share: ``x_i * (L^T g)_i`` per bar, with ``g`` the
  path-averaged gradient of the components. The metrics' attributions add up to the
  components'.

Limits. The loadings are the training fit's (``reference_components``), which the rolling PCA's
axes are sign-aligned to; the rolling axes drift, so the split of a component over its metrics
is the fit's, not the day's. Attributions say what moved this network's margin from the
baseline, not what moves prices; two inputs that carry the same information share credit in
whatever way the network happens to read them.

Cost: per network, one forward pass of the state and the baseline, and one forward and backward
pass of :data:`STEPS` interpolated states (captum adds a few milliseconds of its own); about
20 times the decision itself for a default-size module on a CPU
(``tests/benchmarks/bench_explain.py``), which is why the daemon explains after sending the
cycle's orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients

from strategies.agents.networks import EAM_ACTIONS, SAM_ACTIONS
from strategies.agents.observation import (
    COIN_ROW,
    PRICE_FEATURES,
    bar_rows,
    metric_rows,
    observations_between,
    signal_windows,
)
from strategies.module_outputs import infer_on_one_thread, network_outputs
from strategies.registry import LoadedCryptoModule

if TYPE_CHECKING:
    from strategies.crypto_module import CryptoModule

STEPS = 16
"""Integration points per decision (Gauss-Legendre: exact for polynomials of degree 31)."""

SIGNAL_INPUT = "EAM signal"
"""The name of the SAM's EAM-signal channel."""

Target = Literal["margin", "q"]


@dataclass(frozen=True)
class AgentExplanation:
    """One network's decision and what drove it.

    ``inputs``: ``(name, attribution)`` of every named input (price channels, metrics, the EAM
    signal), largest ``|attribution|`` first; positive pushed the chosen action, negative held
    it back. ``components``: the same for the DRU's components (``pc1 ..``), whose attribution
    the metrics split. ``q``: the Q-value of every action. ``explained``: the attributed
    quantity at the state minus at the baseline; ``delta``: the attributions' sum minus it.
    """

    agent: str
    action: str
    q: dict[str, float]
    inputs: tuple[tuple[str, float], ...]
    components: tuple[tuple[str, float], ...]
    explained: float
    delta: float

    def top(self, n: int = 5) -> tuple[tuple[str, float], ...]:
        """The ``n`` inputs with the largest ``|attribution|``."""
        return self.inputs[:n]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready: ``action``, ``q``, ``top`` (``[[name, attribution], ...]``), ``pcs``."""
        inputs = self.inputs if top is None else self.inputs[:top]
        return {
            "action": self.action,
            "q": {a: round(v, 6) for a, v in self.q.items()},
            "top": [[name, round(value, 6)] for name, value in inputs],
            "pcs": [[name, round(value, 6)] for name, value in self.components],
        }


@dataclass(frozen=True)
class Explanation:
    """A Crypto Module's decision at the close ``ts``: the SAM's (and the EAM's) explanation."""

    ts: int
    coin: str
    model_id: str
    position: float
    """The coin weight held when deciding (the SAM's position input, kept fixed)."""
    sam: AgentExplanation
    eam: AgentExplanation | None = None

    @property
    def action(self) -> str:
        """The module's decision (the SAM's action)."""
        return self.sam.action

    def top(self, n: int = 5) -> tuple[tuple[str, float], ...]:
        """The SAM's ``n`` most influential inputs."""
        return self.sam.top(n)

    def to_dict(self, top: int | None = 8) -> dict[str, Any]:
        """JSON-ready (what the journal keeps): ``action``, ``q``, ``top`` and ``pcs`` of the
        SAM, ``model_id``, ``position``, and the EAM's under ``eam``."""
        out = {"model_id": self.model_id, "position": self.position, **self.sam.to_dict(top)}
        if self.eam is not None:
            out["eam"] = self.eam.to_dict(top)
        return out


@dataclass(frozen=True)
class DecisionInputs:
    """What a module's networks read at its last decision (kept by the module, bar by bar)."""

    ts: int
    state: np.ndarray
    """The base state ``(F, 2, n)`` (the EAM's input)."""
    sam_state: np.ndarray
    """The SAM's data channels ``(C, 2, n)`` (the base state plus the EAM signal channel)."""
    position: float
    """The coin weight held when deciding."""


@dataclass(frozen=True)
class InputNames:
    """The named inputs of a module's state and how its components map onto metrics."""

    components: tuple[str, ...]
    metrics: tuple[str, ...]
    loadings: np.ndarray | None
    """``(k, m)`` training-fit loadings, or None when the components cannot be mapped."""
    signal: bool
    price: tuple[str, ...] = field(default=PRICE_FEATURES)

    @classmethod
    def of(cls, model: LoadedCryptoModule) -> InputNames:
        """The names of ``model``'s state."""
        spec = model.feature_spec
        k = len(model.schema.metric_features)
        loadings = None
        metrics: tuple[str, ...] = ()
        if spec is not None and k and len(spec.refiner.reference_components) == k:
            loadings = np.asarray(spec.refiner.reference_components, dtype=np.float64)
            metrics = tuple(spec.metric_ids)
        return cls(tuple(f"pc{i + 1}" for i in range(k)), metrics, loadings, model.eam is not None)


def _margins(q: torch.Tensor) -> torch.Tensor:
    """Each action's Q-value minus the mean of the other actions'."""
    actions = q.shape[1]
    return q - (q.sum(dim=1, keepdim=True) - q) / (actions - 1)


def _integrate(
    forward: Any,
    data: torch.Tensor,
    actions: torch.Tensor,
    extra: tuple[torch.Tensor, ...],
    steps: int,
) -> np.ndarray:
    """Path-averaged gradients ``(B, C, 2, n)`` of ``forward``'s output at ``actions`` from
    the zero state to ``data`` (captum, Gauss-Legendre)."""
    ig = IntegratedGradients(forward, multiply_by_inputs=False)
    gradients = ig.attribute(
        data,
        baselines=0.0,
        target=actions,
        additional_forward_args=extra or None,
        n_steps=steps,
    )
    return gradients.detach().numpy()


def _named(
    names: InputNames, data: np.ndarray, gradients: np.ndarray, signal: bool
) -> tuple[list[dict[str, float]], list[dict[str, float]], np.ndarray]:
    """Per decision: ``{input: attribution}``, ``{component: attribution}`` and the sum of
    all attributions ``(B,)``."""
    contribution = (data * gradients).sum(axis=(2, 3))  # (B, C): per channel, rows and time
    price, k = len(names.price), len(names.components)
    per_input = [dict(zip(names.price, row[:price].tolist(), strict=True)) for row in contribution]
    per_component = [
        dict(zip(names.components, row[price : price + k].tolist(), strict=True))
        for row in contribution
    ]
    if k and names.loadings is not None:
        loadings = names.loadings  # (k, m)
        pcs = data[:, price : price + k, COIN_ROW, :]  # (B, k, n)
        grads = gradients[:, price : price + k, COIN_ROW, :]
        x = np.einsum("ki,bkn->bin", loadings, pcs)  # the metric vector the components carry
        gx = np.einsum("ki,bkn->bin", loadings, grads)
        shares = (x * gx).sum(axis=2)  # (B, m)
        for row, share in zip(per_input, shares, strict=True):
            row.update(zip(names.metrics, share.tolist(), strict=True))
    elif k:  # no loadings to map through: the components stand for their metrics
        for row, comp in zip(per_input, per_component, strict=True):
            row.update(comp)
    if signal:
        for row, value in zip(per_input, contribution[:, price + k].tolist(), strict=True):
            row[SIGNAL_INPUT] = value
    return per_input, per_component, contribution.sum(axis=1)


def _ranked(values: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(values.items(), key=lambda item: (-abs(item[1]), item[0])))


def _explain_agent(
    agent: str,
    labels: Sequence[str],
    forward: Any,
    q_of: Any,
    names: InputNames,
    data: np.ndarray,
    extra: tuple[torch.Tensor, ...],
    signal: bool,
    target: Target,
    steps: int,
    actions: np.ndarray | None = None,
) -> list[AgentExplanation]:
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    batch = len(tensor)
    with torch.no_grad():  # the state and the baseline in one pass
        both = q_of(
            torch.cat((tensor, torch.zeros_like(tensor))), *(torch.cat((e, e)) for e in extra)
        )
    q, q_zero = both[:batch], both[batch:]
    chosen = q.argmax(dim=1) if actions is None else torch.as_tensor(actions, dtype=torch.long)
    wrapped = forward if target == "q" else (lambda d, *e: _margins(forward(d, *e)))
    gradients = _integrate(wrapped, tensor, chosen, extra, steps)
    rows = torch.arange(batch)
    attributed = (q, q_zero) if target == "q" else (_margins(q), _margins(q_zero))
    at_state, at_zero = (a[rows, chosen].numpy() for a in attributed)
    per_input, per_component, totals = _named(names, data, gradients, signal)
    out = []
    for b, (inputs, components) in enumerate(zip(per_input, per_component, strict=True)):
        explained = float(at_state[b] - at_zero[b])
        out.append(
            AgentExplanation(
                agent=agent,
                action=labels[int(chosen[b])],
                q=dict(zip(labels, q[b].tolist(), strict=True)),
                inputs=_ranked(inputs),
                components=_ranked(components),
                explained=explained,
                delta=float(totals[b] - explained),
            )
        )
    return out


def explain_states(
    model: LoadedCryptoModule,
    states: np.ndarray,
    signals: np.ndarray | None,
    positions: np.ndarray,
    *,
    ts: Sequence[int] = (),
    target: Target = "margin",
    steps: int = STEPS,
    with_eam: bool = True,
    actions: np.ndarray | None = None,
    eam_actions: np.ndarray | None = None,
) -> list[Explanation]:
    """Explain the decisions at ``states (B, F, 2, n)`` (base states), with the EAM's signal
    windows ``signals (B, n)`` (None without an EAM) and the positions held ``(B,)``.

    ``actions``/``eam_actions``: the SAM's (0 cash, 1 coin) and the EAM's (0 sell, 1 hold,
    2 buy) actions as the module took them (default: the argmax of a batched pass, which a
    near tie could flip)."""
    infer_on_one_thread()
    names = InputNames.of(model)
    states = np.asarray(states, dtype=np.float32).reshape(-1, *states.shape[-3:])
    positions = np.asarray(positions, dtype=np.float32).reshape(len(states))
    sam_data = states
    if model.eam is not None:
        assert signals is not None, "a module with an EAM needs the signal windows"
        channel = np.zeros((len(states), 1, 2, states.shape[-1]), dtype=np.float32)
        channel[:, 0, COIN_ROW] = np.asarray(signals, dtype=np.float32)
        sam_data = np.concatenate((states, channel), axis=1)
    sam = model.sam

    def sam_q(data: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return sam.q_values(sam.features(data), position)

    position = torch.from_numpy(positions)
    sams = _explain_agent(
        "sam",
        SAM_ACTIONS,
        sam_q,
        sam_q,
        names,
        sam_data,
        (position,),
        model.eam is not None,
        target,
        steps,
        actions,
    )
    eams: list[AgentExplanation | None] = [None] * len(states)
    if with_eam and model.eam is not None:
        eam = model.eam
        eam_names = InputNames(names.components, names.metrics, names.loadings, False)
        eams = list(
            _explain_agent(
                "eam",
                EAM_ACTIONS,
                eam,
                eam,
                eam_names,
                states,
                (),
                False,
                target,
                steps,
                eam_actions,
            )
        )
    stamps = list(ts) or [0] * len(states)
    return [
        Explanation(int(t), model.coin, model.id, float(p), s, e)
        for t, p, s, e in zip(stamps, positions.tolist(), sams, eams, strict=True)
    ]


def explain_decision(
    module: CryptoModule, *, target: Target = "margin", steps: int = STEPS
) -> Explanation | None:
    """Explain ``module``'s last decision (None when it has not decided from its networks
    since it was loaded, or decided from a precomputed plan: explain those with
    :func:`explain_history`)."""
    inputs = module.last_inputs
    if inputs is None:
        return None
    signals = eam_actions = None
    if module.model.eam is not None:
        signals = inputs.sam_state[-1, COIN_ROW][None]
        eam_actions = np.array([module.signal + 1])
    return explain_states(
        module.model,
        inputs.state[None],
        signals,
        np.array([inputs.position]),
        ts=(inputs.ts,),
        target=target,
        steps=steps,
        actions=np.array([int(module.position)]),
        eam_actions=eam_actions,
    )[0]


def explain_history(
    model: LoadedCryptoModule,
    ohlcv: np.ndarray,
    features: np.ndarray,
    ready: np.ndarray,
    positions: np.ndarray,
    at: Sequence[int],
    *,
    ts: Sequence[int] = (),
    target: Target = "margin",
    steps: int = STEPS,
    chunk: int = 256,
) -> list[Explanation]:
    """Explain the decisions at bars ``at`` (indices) of a history read from its first bar:
    ``ohlcv (T, 5)``, the DRU's ``features (T, k)`` and ``ready (T,)``, and the coin weight
    held at each bar ``positions (T,)``; bars without a decision (no full window, DRU not
    ready) are left out. ``ts``: the close time of every bar (``T``), for the stamps."""
    window = model.schema.window
    ready = np.asarray(ready, dtype=bool)
    at = [int(i) for i in at if i >= window - 1 and ready[int(i)]]
    if not at:
        return []
    rows, metrics = bar_rows(ohlcv), metric_rows(features, ready)
    # the networks' actions as the module took them (near ties settled bar by bar)
    outputs = network_outputs(model, ohlcv, features, ready)
    signals = None
    if model.eam is not None:
        signals = signal_windows(outputs.signals, window)
    held = (np.asarray(positions, dtype=np.float64) >= 0.5).astype(np.int64)
    stamps = np.asarray(ts, dtype=np.int64) if len(ts) else np.zeros(len(ohlcv), np.int64)
    out: list[Explanation] = []
    for start in range(0, len(at), chunk):
        part = at[start : start + chunk]
        states = np.concatenate(
            [observations_between(rows, metrics, window, i, i + 1) for i in part]
        )
        windows = None if signals is None else signals[part, 0, COIN_ROW]
        out += explain_states(
            model,
            states,
            windows,
            np.asarray(positions, dtype=np.float32)[part],
            ts=stamps[part].tolist(),
            target=target,
            steps=steps,
            actions=outputs.actions[part, held[part]],
            eam_actions=(outputs.signals[part] + 1).astype(np.int64),
        )
    return out


def attribution_frame(explanations: Sequence[Explanation]) -> Any:
    """A long frame ``ts, coin, action, input, attribution`` of the SAM's inputs (reports)."""
    import pandas as pd

    rows = [
        (e.ts, e.coin, e.action, name, value) for e in explanations for name, value in e.sam.inputs
    ]
    return pd.DataFrame(rows, columns=["ts", "coin", "action", "input", "attribution"])
