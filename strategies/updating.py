"""The Agent Updating Unit (AUU): scheduled retraining behind a validation gate.

The daemon owns one :class:`ModuleUpdater` and, at each cycle, on its own clock:

1. ``updater.due(now_ms)`` names the coins whose module is due for retraining
   (:class:`RetrainSchedule`: every ``[updating].every_days``);
2. ``outcome = await updater.retrain(coin, now_ms)`` runs in a background task. The work
   (:func:`retrain_job`) runs in a separate *process*, so the event loop never blocks: it reads
   the stores up to ``now_ms`` only, fits the DRU on the new training window
   (:func:`retrain_windows`), trains a candidate with :func:`~strategies.agents.train.train_cm`
   (its checkpoint chosen on the validation window), saves it to the registry and scores the
   candidate *and* the active model on the **gate window**: the last ``gate_days`` before now,
   after the validation window, which the candidate was neither trained nor selected on (the
   SAM's net log return with fees; the active model rebuilt with its own frozen DRU spec).
   Comparing on the selection window would hand every candidate an edge: its checkpoint is the
   best of many on exactly those bars. The job also replays the candidate through the stress
   scenarios grafted onto the recent bars (:mod:`strategies.stress`);
3. :class:`ValidationGate` accepts the candidate iff its gate score is at least the active
   model's minus ``[updating].tolerance``, and :class:`~strategies.stress.StressGate` refuses it
   when its drawdown or loss in any scenario exceeds ``stress_max_drawdown`` /
   ``stress_max_loss``; an accepted candidate is activated in the coin's version history
   (:mod:`strategies.versions`), a rejected one stays in the registry, inactive. Either way the
   attempt, its time and the reason are recorded (and the daemon alerts it), so a restarted
   daemon does not retrain again;
4. when ``outcome.swap`` is true, the daemon loads ``outcome.active_folder`` with
   ``CryptoModule.load``, warms it up and swaps it in with ``PortfolioVote.replace`` between two
   cycles.

Nothing here reads the wall clock for a decision: every time is passed in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bot.timeframes import DAY_MS, CandleGrid, floor_ms, ms_to_datetime, timeframe_ms
from config.schema import AppConfig, UpdatingConfig
from strategies import versions
from strategies.agents.env import CoinTensors
from strategies.agents.observation import build_observations, signal_windows
from strategies.agents.train import (
    CoinHistory,
    TrainedCryptoModule,
    Windows,
    agent_score,
    buy_and_hold_score,
    coin_history,
    decision_range,
    eam_signals,
    train_cm,
)
from strategies.features.inputs import CoinInputs
from strategies.registry import (
    LoadedCryptoModule,
    load_crypto_module,
    read_card,
    save_crypto_module,
)
from strategies.stress import StressGate, stress_replay

log = logging.getLogger(__name__)

Trainer = Callable[..., TrainedCryptoModule]
"""What trains a candidate: :func:`~strategies.agents.train.train_cm`'s signature
``(history, windows, params, seed, *, cost, log_path=None)``. Must be a top-level (picklable)
function, since it travels to the worker process."""


# --- windows ------------------------------------------------------------------------------------


def retrain_windows(now_ms: int, updating: UpdatingConfig, timeframe: str) -> Windows:
    """The rolling windows of a retraining at ``now_ms``, as bar close-time ranges.

    Gate (``Windows.test``): the ``gate_days`` that end at the last whole UTC day boundary at or
    before ``now_ms`` (also a bar close of ``timeframe``); validation (checkpoint selection): the
    ``validation_days`` before that; train: the ``train_days`` before that. The three are
    consecutive and disjoint; the last bar any window uses closes at or before ``now_ms``:
    nothing after now is read.
    """
    end = CandleGrid(timeframe).floor(floor_ms(int(now_ms), DAY_MS))
    gate_start = end - updating.gate_days * DAY_MS
    validation_start = gate_start - updating.validation_days * DAY_MS
    train_start = validation_start - updating.train_days * DAY_MS
    return Windows(
        (train_start, validation_start), (validation_start, gate_start), (gate_start, end)
    )


def causal_inputs(inputs: CoinInputs, end_ms: int) -> CoinInputs:
    """``inputs`` cut at ``end_ms``: bars that closed by then, metric values observed before it
    and known by it. Whatever the stores hold after ``end_ms`` cannot reach a retraining."""
    step = timeframe_ms(inputs.timeframe)
    bars = inputs.bars[inputs.bars["open_time"].to_numpy() + step <= end_ms]
    metrics = inputs.metrics
    if not metrics.empty:
        keep = metrics["observed_at"].to_numpy() < end_ms
        if "known_at" in metrics.columns:
            keep &= metrics["known_at"].to_numpy() <= end_ms
        metrics = metrics[keep]
    return CoinInputs(
        inputs.coin, inputs.timeframe, bars.reset_index(drop=True), metrics.reset_index(drop=True)
    )


# --- scoring ------------------------------------------------------------------------------------


def model_history(model: LoadedCryptoModule, inputs: CoinInputs) -> CoinHistory:
    """``inputs`` refined with the model's own frozen DRU spec (the features it was trained on)."""
    if model.schema.timeframe != inputs.timeframe:
        raise ValueError(
            f"model {model.id} trades {model.schema.timeframe} bars, the config {inputs.timeframe}"
        )
    if model.feature_spec is not None:
        return coin_history(inputs.bars, inputs.metrics, inputs.timeframe, model.feature_spec)
    bars = inputs.bars
    return CoinHistory(
        coin=model.coin,
        timeframe=inputs.timeframe,
        open_time=bars["open_time"].to_numpy(dtype=np.int64),
        ohlcv=bars[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64),
        features=np.zeros((len(bars), 0)),
        ready=np.ones(len(bars), dtype=bool),
        feature_names=(),
    )


def validation_score(
    model: LoadedCryptoModule, history: CoinHistory, window_ms: tuple[int, int], fee: float
) -> float:
    """The SAM's validation score over ``window_ms``: the cumulative net log return of its greedy
    policy, starting in cash, with ``fee`` per change (the measure ``train_cm`` reports as
    ``scores["validation"]["sam"]``), with the states built as in training."""
    if tuple(history.feature_names) != tuple(model.schema.metric_features):
        raise ValueError(
            f"model {model.id} expects features {list(model.schema.metric_features)}, "
            f"the history has {list(history.feature_names)}"
        )
    window = model.schema.window
    states = build_observations(history.ohlcv, history.features, history.ready, window)
    tensors = CoinTensors.from_arrays(states, history.ohlcv[:, 3], history.close_time)
    if model.eam is not None:
        signals = eam_signals(model.eam, tensors.states, window)
        tensors = tensors.with_states(np.concatenate((states, signal_windows(signals, window)), 1))
    decisions = decision_range(history.close_time, window_ms, window)
    return agent_score(model.sam, tensors, decisions, "sam", fee)


# --- the job (runs in the worker process) ------------------------------------------------------


async def _read_inputs(cfg: AppConfig, coin: str) -> CoinInputs:
    from bot.store import MarketStore, MetricStore
    from strategies.features.inputs import read_coin_inputs

    async with (
        await MarketStore.open(cfg.data.market_path) as market,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        return await read_coin_inputs(cfg, market, metrics, coin)


def retrain_job(
    cfg_json: Mapping[str, Any], coin: str, now_ms: int, trainer: Trainer | None = None
) -> dict[str, Any]:
    """Train a candidate for ``coin`` at ``now_ms`` and score it and the active model.

    Top-level and picklable: :class:`ModuleUpdater` runs it in a worker process. ``cfg_json`` is
    ``AppConfig.model_dump(mode="json")``; ``trainer`` defaults to ``train_cm``. Saves the
    candidate (created at ``now_ms``) into ``[training].models_dir``; activates nothing (the
    gate decides in the caller). Returns JSON-ready ids, scores, windows and this process's id.
    Call it in a thread or process without a running event loop.
    """
    from strategies.features.inputs import fit_coin_features

    started = time.perf_counter()
    cfg = AppConfig.model_validate(cfg_json)
    root = Path(cfg.training.models_dir)
    windows = retrain_windows(now_ms, cfg.updating, cfg.market.timeframe)
    assert windows.test is not None
    end = windows.test[1]
    inputs = causal_inputs(asyncio.run(_read_inputs(cfg, coin)), end)
    spec = fit_coin_features(cfg, inputs, *windows.train)
    history = coin_history(inputs.bars, inputs.metrics, inputs.timeframe, spec)

    # Pin the active model before the candidate lands in the registry as "the newest".
    incumbent_id = versions.pin_active(root, coin, now_ms)
    log_path = root / coin / f".retrain-{now_ms}.jsonl"
    log_path.unlink(missing_ok=True)
    fee = cfg.broker.trading_cost  # what training, backtests and live trading pay
    trained = (trainer or train_cm)(
        history, windows, cfg.agents, cfg.updating.seed, cost=fee, log_path=log_path
    )
    folder = save_crypto_module(
        root,
        trained,
        config=cfg,
        training=cfg.training,
        exchange=cfg.market.exchange,
        symbol=cfg.market.symbol(coin),
        log_file=log_path,
        created_at=ms_to_datetime(now_ms),
    )

    # Both on the same gate bars (not the ones the checkpoint was selected on), with the same
    # fee and the same score function.
    candidate = load_crypto_module(folder)
    candidate_score = validation_score(candidate, history, windows.test, fee)
    incumbent_score = None
    if incumbent_id is not None:
        incumbent = load_crypto_module(root / coin / incumbent_id)
        incumbent_score = validation_score(
            incumbent, model_history(incumbent, inputs), windows.test, fee
        )
    stress = [
        stress_replay(
            candidate,
            inputs.bars,
            inputs.metrics,
            scenario,
            end_ms=end,
            days=cfg.updating.stress_days,
            fee=fee,
            seed=cfg.updating.seed,
        ).to_dict()
        for scenario in cfg.updating.stress_scenarios
    ]
    tensors = CoinTensors.from_arrays(
        np.zeros((len(history.close_time), 0, 2, 1), np.float32),
        history.ohlcv[:, 3],
        history.close_time,
    )
    gate = decision_range(history.close_time, windows.test, cfg.agents.window)
    return {
        "coin": coin,
        "now_ms": int(now_ms),
        "windows": {
            "train": list(windows.train),
            "validation": list(windows.validation),
            "gate": list(windows.test),
        },
        "candidate_id": candidate.id,
        "candidate_folder": str(folder),
        "candidate_score": candidate_score,
        "candidate_training_score": float(trained.scores["validation"].get("sam", math.nan)),
        "buy_and_hold_score": buy_and_hold_score(tensors, gate, fee),
        "stress": stress,
        "incumbent_id": incumbent_id,
        "incumbent_score": incumbent_score,
        "selected_metrics": list(spec.metric_ids),
        "pid": os.getpid(),
        "seconds": time.perf_counter() - started,
    }


# --- the gate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may replace the active module, and why."""

    accepted: bool
    reason: str


class ValidationGate:
    """Accepts a candidate iff ``candidate >= incumbent - tolerance`` (both scored on the same
    gate window, which the candidate was not selected on); a coin without an active model
    accepts any finite score."""

    def __init__(self, tolerance: float) -> None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = float(tolerance)

    def decide(self, candidate_score: float, incumbent_score: float | None) -> GateDecision:
        """The decision for one candidate."""
        if not math.isfinite(candidate_score):
            return GateDecision(False, f"candidate score {candidate_score} is not finite")
        if incumbent_score is None:
            return GateDecision(
                True, f"no active model to compare with; candidate {candidate_score:+.4f}"
            )
        floor = incumbent_score - self.tolerance
        if candidate_score >= floor:
            return GateDecision(
                True,
                f"candidate {candidate_score:+.4f} >= active {incumbent_score:+.4f} "
                f"- tolerance {self.tolerance:g}",
            )
        return GateDecision(
            False,
            f"candidate {candidate_score:+.4f} < active {incumbent_score:+.4f} "
            f"- tolerance {self.tolerance:g}",
        )


# --- the schedule -------------------------------------------------------------------------------


def trained_through_ms(card: Mapping[str, Any]) -> int:
    """The newest data a model was fitted or chosen on: the end of its validation range (else of
    its bars, else its creation time). Retraining counts from there when it never ran."""
    ranges = card.get("data_ranges") or {}
    for name in ("validation", "bars"):
        span = ranges.get(name)
        if span and span.get("ms"):
            return int(span["ms"][1])
    created = datetime.fromisoformat(str(card["created_at"]).replace("Z", "+00:00"))
    return int(created.timestamp() * 1000)


class RetrainSchedule:
    """Which coins are due for retraining at an explicit time.

    A coin is due ``every_days`` after its last retraining (recorded in its ``versions.json``,
    whatever the outcome). A coin never retrained is due ``every_days`` after the newest data
    its active model was trained and validated on (:func:`trained_through_ms`), not after its
    creation time: that is a wall-clock time, meaningless on a simulated clock, and a module
    trained long ago on old data *should* be retrained at once. A coin with no model at all is
    due immediately (the retraining trains its first one). All state lives in the registry, so a
    new schedule over the same registry agrees with the old one.
    """

    def __init__(self, root: Path, coins: Sequence[str], every_days: float) -> None:
        if not every_days > 0:
            raise ValueError(f"every_days must be > 0, got {every_days}")
        self.root = Path(root)
        self.coins = tuple(coins)
        self.every_ms = round(every_days * DAY_MS)

    def anchor_ms(self, coin: str) -> int | None:
        """What the next retraining counts from (None: no model and never retrained)."""
        last = versions.last_retrain_ms(self.root, coin)
        if last is not None:
            return last
        folder = versions.active_folder(self.root, coin)
        return None if folder is None else trained_through_ms(read_card(folder))

    def next_due_ms(self, coin: str) -> int | None:
        """When ``coin`` is next due (None: due now, it has no model and was never retrained)."""
        anchor = self.anchor_ms(coin)
        return None if anchor is None else anchor + self.every_ms

    def is_due(self, coin: str, now_ms: int) -> bool:
        """Whether ``coin`` is due at ``now_ms``."""
        due_at = self.next_due_ms(coin)
        return due_at is None or now_ms >= due_at

    def due(self, now_ms: int) -> list[str]:
        """The coins due at ``now_ms``, in config order. A coin whose registry cannot be read is
        logged and skipped (the daemon keeps trading with what it has)."""
        coins = []
        for coin in self.coins:
            try:
                if self.is_due(coin, now_ms):
                    coins.append(coin)
            except (LookupError, ValueError, OSError) as exc:
                log.error("retraining schedule of %s unreadable: %s", coin, exc)
        return coins


# --- the updater --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainOutcome:
    """What one retraining did. ``swap``: the daemon should load ``active_folder`` and replace
    the coin's module with it."""

    coin: str
    at_ms: int
    accepted: bool
    reason: str
    active_id: str | None
    """The coin's active model after this retraining."""
    active_folder: Path | None
    candidate_id: str | None = None
    candidate_score: float | None = None
    incumbent_id: str | None = None
    incumbent_score: float | None = None
    buy_and_hold_score: float | None = None
    """Buying at the first gate decision and holding, on the same bars (for reports)."""
    windows: Windows | None = None
    """Train, validation (checkpoint selection) and gate (``test``) windows."""
    stress: tuple[dict[str, Any], ...] = ()
    """The candidate in each stress scenario (:meth:`StressResult.to_dict`)."""
    pid: int | None = None
    """The id of the process that trained the candidate."""
    seconds: float = 0.0
    error: str | None = None

    @property
    def swap(self) -> bool:
        """Whether a new module became active (and should be hot-swapped in)."""
        return (
            self.accepted
            and self.candidate_id is not None
            and self.active_id == (self.candidate_id)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in the coin's ``versions.json``)."""
        data = asdict(self)
        data["active_folder"] = None if self.active_folder is None else str(self.active_folder)
        data["seconds"] = round(self.seconds, 3)
        data["windows"] = (
            None
            if self.windows is None
            else {
                "train": list(self.windows.train),
                "validation": list(self.windows.validation),
                "gate": None if self.windows.test is None else list(self.windows.test),
            }
        )
        data["stress"] = [dict(r) for r in self.stress]
        data["swap"] = self.swap
        return data


def _spawn_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


class ModuleUpdater:
    """Retrains the Crypto Modules of ``cfg``'s coins on schedule, off the event loop.

    ``executor`` runs :func:`retrain_job`; by default a one-worker *spawn* process pool owned by
    the updater (created on first use, shut down by :meth:`close`). ``trainer`` replaces
    ``train_cm`` (a top-level function with its signature).
    """

    def __init__(
        self, cfg: AppConfig, *, executor: Executor | None = None, trainer: Trainer | None = None
    ) -> None:
        self.cfg = cfg
        self.root = Path(cfg.training.models_dir)
        self.schedule = RetrainSchedule(self.root, cfg.market.coins, cfg.updating.every_days)
        self.gate = ValidationGate(cfg.updating.tolerance)
        self.stress_gate = StressGate(
            cfg.updating.stress_max_drawdown, cfg.updating.stress_max_loss
        )
        self.trainer = trainer
        self._cfg_json = cfg.model_dump(mode="json")
        self._executor = executor
        self._owns_executor = executor is None
        self._running: set[str] = set()

    @property
    def running(self) -> frozenset[str]:
        """Coins whose retraining is in progress."""
        return frozenset(self._running)

    def due(self, now_ms: int) -> list[str]:
        """Coins due at ``now_ms`` and not already retraining; none when ``[updating].enabled`` is
        false."""
        if not self.cfg.updating.enabled:
            return []
        return [coin for coin in self.schedule.due(now_ms) if coin not in self._running]

    async def retrain(self, coin: str, now_ms: int) -> RetrainOutcome:
        """Retrain ``coin`` at ``now_ms`` in the worker, gate the candidate, activate it if
        accepted, record the attempt; never raises for a failed job (the outcome says why)."""
        if coin not in self.cfg.market.coins:
            raise ValueError(f"{coin!r} is not in market.coins {list(self.cfg.market.coins)}")
        if coin in self._running:
            raise RuntimeError(f"{coin} is already retraining")
        self._running.add(coin)
        started = time.perf_counter()
        try:
            job = functools.partial(retrain_job, self._cfg_json, coin, now_ms, self.trainer)
            try:
                result = await asyncio.get_running_loop().run_in_executor(self._pool(), job)
                outcome = await asyncio.to_thread(self._decide, coin, now_ms, result, started)
            except Exception as exc:
                if isinstance(exc, BrokenProcessPool) and self._owns_executor:
                    self._executor = None  # a fresh worker next time
                log.exception("retraining %s at %d failed", coin, now_ms)
                outcome = await asyncio.to_thread(self._failed, coin, now_ms, exc, started)
            try:
                await asyncio.to_thread(
                    versions.record_retrain, self.root, coin, now_ms, outcome.to_dict()
                )
            except (OSError, versions.VersionError):
                log.exception("could not record the retraining of %s", coin)
            log.info("retraining %s: %s", coin, outcome.reason)
            return outcome
        finally:
            self._running.discard(coin)

    def _decide(
        self, coin: str, now_ms: int, result: dict[str, Any], started: float
    ) -> RetrainOutcome:
        incumbent_id, incumbent_score = result["incumbent_id"], result["incumbent_score"]
        decision = self.gate.decide(result["candidate_score"], incumbent_score)
        stress = result.get("stress") or []
        if stress:
            verdict = self.stress_gate.decide(stress)
            reasons = (decision.reason, verdict.reason)
            decision = GateDecision(
                decision.accepted and verdict.passed,
                "; ".join(reasons if verdict.passed else reasons[::-1]),
            )
        if decision.accepted:
            versions.activate(
                self.root,
                coin,
                result["candidate_id"],
                reason="retrain" if incumbent_id is not None else "initial",
                at_ms=now_ms,
                validation_score=result["candidate_score"],
                incumbent_score=incumbent_score,
            )
            active_id = result["candidate_id"]
        else:
            active_id = versions.active_model(self.root, coin)
        windows = result["windows"]
        return RetrainOutcome(
            coin=coin,
            at_ms=now_ms,
            accepted=decision.accepted,
            reason=("accepted: " if decision.accepted else "rejected: ") + decision.reason,
            active_id=active_id,
            active_folder=None if active_id is None else self.root / coin / active_id,
            candidate_id=result["candidate_id"],
            candidate_score=result["candidate_score"],
            incumbent_id=incumbent_id,
            incumbent_score=incumbent_score,
            buy_and_hold_score=result["buy_and_hold_score"],
            windows=Windows(
                tuple(windows["train"]), tuple(windows["validation"]), tuple(windows["gate"])
            ),
            stress=tuple(stress),
            pid=result["pid"],
            seconds=time.perf_counter() - started,
        )

    def _failed(self, coin: str, now_ms: int, exc: BaseException, started: float) -> RetrainOutcome:
        try:
            active_id = versions.active_model(self.root, coin)
        except versions.VersionError:
            active_id = None
        message = f"{type(exc).__name__}: {exc}"
        return RetrainOutcome(
            coin=coin,
            at_ms=now_ms,
            accepted=False,
            reason=f"failed: {message}",
            active_id=active_id,
            active_folder=None if active_id is None else self.root / coin / active_id,
            seconds=time.perf_counter() - started,
            error=message,
        )

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = _spawn_pool()
        return self._executor

    def close(self, wait: bool = True) -> None:
        """Shut down the worker pool the updater owns (a given executor is left alone).

        A retraining in progress is not interrupted: with ``wait`` this returns when it ends (at
        most one training budget); without, at once, and the worker exits when its job is done.
        Its candidate is then saved but neither gated nor recorded, so the coin is due again.
        """
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ModuleUpdater:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
