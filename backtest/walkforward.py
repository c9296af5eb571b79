"""Walk-forward with retraining: the policy judged the way the Agent Updating Unit would run it.

The out-of-sample span ``[start, end)`` is cut into folds of ``retrain_every_days``. At each
fold's start (a *refit*), for every coin, only the data known then is read
(:func:`strategies.updating.causal_inputs`): the DRU selects and fits the features on the
``train_days`` before the last ``val_days``, and the Crypto Modules (one per coin and seed) are
trained on the same days with their checkpoint chosen on the ``val_days`` that end at the refit.
They then trade until the next refit. The trainings of every fold, coin and seed are fanned out
on ``[compute]`` (process pool, or Ray).

Each seed's policy trades the whole span in one engine run, its modules swapped at each refit
(:class:`backtest.policies.FoldSwitchingVote`, each fold's modules warmed up on the
``[live].warmup_days`` before it, as the daemon warms a module before a hot swap), so the
out-of-sample equity is one stitched curve with no forced sale at refits; every baseline trades
the same span through the same engine. These engine runs fan out on ``[compute]`` too. Per-fold
metrics are the same curves cut at the refits. :mod:`backtest.wf_report` turns the runs into
statistics (bootstrap intervals, DSR, PBO), diagnostics, tables and plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backtest.compute import fan_out
from backtest.experiment import PORTFOLIOS, DataRangeError
from backtest.pipeline import (
    MarsTrainJob,
    RecordingPolicy,
    TrainJob,
    replay_driver,
    run_mars_job,
    run_train_job,
    save_trained,
)
from backtest.policies import FoldSpan, PolicyContext, baseline_names, policy_builder
from backtest.result import RunResult
from backtest.run import run_backtest
from bot.events import GrossExposure, ModuleDecision, VariantWeights
from bot.feed import dataset
from bot.store import MarketStore, MetricStore
from bot.timeframes import DAY_MS, ms_to_iso, timeframe_ms
from config.schema import AppConfig, DataConfig, TrainingConfig
from strategies.agents.train import CoinHistory, Windows, coin_history
from strategies.features.inputs import CoinInputs, fit_coin_features, read_coin_inputs
from strategies.mars.artifact import save_ensemble
from strategies.registry import runtime
from strategies.updating import causal_inputs

MIN_TRAIN_DAYS = 30
"""A coin needs at least this many days of bars in a fold's training window."""


@dataclass(frozen=True)
class WalkForwardSpec:
    """What to walk forward: the policy, the fold geometry, seeds and portfolios."""

    policy: str
    retrain_every_days: int
    train_days: int
    val_days: int
    seeds: tuple[int, ...]
    portfolios: tuple[str, ...] = ("a", "b", "c")
    start_ms: int | None = None
    """First refit (None: the first day every coin has ``train_days + val_days`` of bars)."""
    end_ms: int | None = None
    """End of the span (None: the close of the last bar every coin has)."""
    prior_trials: int = 0
    """Trials run before this one on the same question (counted in the DSR)."""
    bag: int = 1
    """Seeds per replication unit: 1, each seed is a run; ``B > 1``, each run is a seed bag
    (:class:`~strategies.seed_bag.SeedBag`) of ``B`` consecutive seeds, keyed by its first
    seed (a policy whose builder takes bags only)."""

    def __post_init__(self) -> None:
        if self.bag < 1 or len(self.seeds) % self.bag:
            raise ValueError(
                f"bag: {self.bag} seeds per bag must be at least 1 and divide the "
                f"{len(self.seeds)} seeds"
            )

    @property
    def units(self) -> tuple[tuple[int, ...], ...]:
        """The seeds of each run: one seed each, or the bags' seeds."""
        return seed_units(self.seeds, self.bag)


def seed_units(seeds: Sequence[int], bag: int) -> tuple[tuple[int, ...], ...]:
    """``seeds`` in runs of ``bag`` consecutive seeds (one seed each for ``bag`` 1)."""
    return tuple(tuple(seeds[i : i + bag]) for i in range(0, len(seeds), bag))


@dataclass(frozen=True)
class Fold:
    """One refit: trained on ``train``, checkpoints chosen on ``validation``, trading
    ``[start_ms, end_ms)``. Ranges are bar close times, half-open."""

    index: int
    start_ms: int
    end_ms: int
    train: tuple[int, int]
    validation: tuple[int, int]

    @property
    def span(self) -> FoldSpan:
        """Where it trades."""
        return FoldSpan(self.index, self.start_ms, self.end_ms)

    @property
    def label(self) -> str:
        """``YYYY-MM-DD..YYYY-MM-DD`` of its trading span."""
        return f"{ms_to_iso(self.start_ms)[:10]}..{ms_to_iso(self.end_ms)[:10]}"


@dataclass
class PortfolioRuns:
    """Every run of one portfolio over the walk-forward span."""

    name: str
    coins: tuple[str, ...]
    policy: dict[int, RunResult]
    decisions: dict[int, list[ModuleDecision]]
    baselines: list[RunResult]
    untrained: dict[int, dict[str, bool]] = field(default_factory=dict)
    regime: dict[int, list[VariantWeights | GrossExposure]] = field(default_factory=dict)
    """Per seed, the MARS controller's weights and the manager's exposure as noted (empty for
    other policies)."""


@dataclass
class WalkForwardRuns:
    """What :func:`run_walkforward` produced, for the report."""

    spec: WalkForwardSpec
    folds: list[Fold]
    portfolios: list[PortfolioRuns]
    notes: list[str]
    trainings: int
    training_seconds: float
    backtest_seconds: float = 0.0
    reused: int = 0
    """Trainings taken from the models folder's cache instead of run again."""
    mars_conservative: tuple[str, ...] = ()
    """``[mars].conservative`` of the run (which variants reports count as conservative)."""
    runtime: dict[str, str] = field(default_factory=dict)
    """What the run trained and replayed on (:func:`strategies.registry.runtime`)."""
    validation: dict[tuple[int, str, int], float] = field(default_factory=dict)
    """The validation score each Crypto Module's checkpoint was chosen by (its SAM's, from its
    card), by (fold, coin, seed); empty for policies that train no Crypto Module."""
    closes: dict[str, pd.Series] = field(default_factory=dict)
    """Each coin's closes at the strategy timeframe, indexed by close time (what the timing
    attribution, :mod:`backtest.timing`, reads)."""
    trend_days: int = 20
    """``[baselines].trend_days`` of the run (the trend filter's window)."""


def plan_folds(
    start_ms: int, end_ms: int, every_days: int, train_days: int, val_days: int
) -> list[Fold]:
    """Folds of ``every_days`` from ``start_ms`` (the last one ends at ``end_ms``)."""
    if every_days < 1 or train_days < 1 or val_days < 1:
        raise ValueError("retrain_every_days, train_days and val_days must be >= 1")
    if end_ms <= start_ms:
        raise DataRangeError(
            f"the walk-forward span {ms_to_iso(start_ms)} .. {ms_to_iso(end_ms)} is empty"
        )
    folds = []
    refit = start_ms
    while refit < end_ms:
        validation_start = refit - val_days * DAY_MS
        folds.append(
            Fold(
                len(folds),
                refit,
                min(refit + every_days * DAY_MS, end_ms),
                (validation_start - train_days * DAY_MS, validation_start),
                (validation_start, refit),
            )
        )
        refit += every_days * DAY_MS
    return folds


def fold_history(cfg: AppConfig, inputs: CoinInputs, fold: Fold) -> CoinHistory:
    """The coin's history as known at the fold's refit, its DRU fitted on the training days."""
    known = causal_inputs(inputs, fold.start_ms)
    spec = fit_coin_features(cfg, known, *fold.train)
    return coin_history(known.bars, known.metrics, known.timeframe, spec)


def walkforward_config(cfg: AppConfig, out_dir: Path, spec: WalkForwardSpec) -> AppConfig:
    """``cfg`` with its stores and registry under ``out_dir``, the portfolios' coins and seeds."""
    coins = tuple(dict.fromkeys(c for p in spec.portfolios for c in PORTFOLIOS[p]))
    return cfg.model_copy(
        update={
            "data": DataConfig(dir=out_dir / "data"),
            "training": TrainingConfig(seeds=spec.seeds, models_dir=out_dir / "models"),
            "market": cfg.market.model_copy(update={"coins": coins}),
        }
    )


async def run_walkforward(
    cfg: AppConfig,
    data_dir: Path | None,
    spec: WalkForwardSpec,
    *,
    step: Callable[[str], None] = lambda name: None,
    on_trained: Callable[[Fold, str, int, float], None] | None = None,
    on_backtest: Callable[[str, str, int | None], None] | None = None,
) -> WalkForwardRuns:
    """Import ``data_dir`` (when given) into ``cfg``'s stores, train every fold, run every
    portfolio with the policy (each seed) and the baselines; trainings and backtests fan out on
    ``[compute]``."""
    import asyncio
    import functools
    import time

    builder = policy_builder(spec.policy)
    if spec.bag > 1 and not builder.bags:
        raise ValueError(f"policy {spec.policy!r} does not take seed bags (--bag {spec.bag})")
    coins = cfg.market.coins
    async with (
        await MarketStore.open(cfg.data.market_path) as market,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        if data_dir is not None:
            step(f"importing {data_dir}")
            await dataset.import_csv_dir(cfg, data_dir, market, metrics)
            await dataset.resample_coins(cfg, market)
        inputs = {c: await read_coin_inputs(cfg, market, metrics, c) for c in coins}
        folds, notes = _folds(spec, inputs)
        step(
            f"{len(folds)} folds from {ms_to_iso(folds[0].start_ms)[:10]} to "
            f"{ms_to_iso(folds[-1].end_ms)[:10]}; refit every {spec.retrain_every_days} days"
        )
        models: dict[tuple[int, str, int], Path] = {}
        started = time.perf_counter()
        reused = 0
        if builder.trains:
            step(
                f"feature selection and training ({builder.trainer}): {len(folds)} folds x "
                f"{len(coins)} coins"
            )
            models, reused = _train_folds(
                cfg, inputs, folds, spec.seeds, on_trained, builder.trainer
            )
        seconds = time.perf_counter() - started
    step(
        f"backtests: {spec.policy} x {len(spec.units) if builder.trains else 1}"
        + (f" bags of {spec.bag} seeds" if spec.bag > 1 else "")
        + f" and every baseline, portfolios {', '.join(spec.portfolios)}"
    )
    jobs = _backtest_jobs(cfg, spec, folds, models, builder.trains)
    started = time.perf_counter()

    # In a thread: a job runs its own event loop when the backend runs it in this process.
    def finished(index: int, result: object) -> None:
        if on_backtest is not None:
            on_backtest(jobs[index].portfolio, jobs[index].policy, jobs[index].seed)

    done = await asyncio.to_thread(
        functools.partial(fan_out, on_result=finished), run_backtest_job, jobs, cfg.compute
    )
    backtest_seconds = time.perf_counter() - started
    results = []
    for name in spec.portfolios:
        members = PORTFOLIOS[name]
        runs = PortfolioRuns(name, members, {}, {}, [])
        for job, (result, decisions, regime) in zip(jobs, done, strict=True):
            if job.portfolio != name:
                continue
            if job.policy == spec.policy:
                key = job.seed if job.seed is not None else 0
                runs.policy[key], runs.decisions[key] = result, decisions
                runs.regime[key] = regime
                runs.untrained[key] = (
                    {c: any(_untrained(f) for f in job.folders(c)) for c in members}
                    if builder.trains
                    else {}
                )
            else:
                runs.baselines.append(result)
        results.append(runs)
    trainings = len(models)
    validation = (
        {key: _validation_score(folder) for key, folder in models.items()}
        if builder.trainer == "cm"
        else {}
    )
    return WalkForwardRuns(
        spec,
        folds,
        results,
        notes,
        trainings,
        seconds,
        backtest_seconds,
        reused=reused,
        mars_conservative=cfg.mars.conservative,
        runtime=runtime(),
        validation=validation,
        closes={c: coin_closes(inputs[c]) for c in coins},
        trend_days=cfg.baselines.trend_days,
    )


def coin_closes(inputs: CoinInputs) -> pd.Series:
    """The coin's closes, indexed by close time (``open_time`` + the timeframe)."""
    bars = inputs.bars
    step = timeframe_ms(inputs.timeframe)
    return pd.Series(
        bars["close"].to_numpy(float),
        index=pd.Index(bars["open_time"].to_numpy(np.int64) + step, name="ts"),
        name=inputs.coin,
    )


def _validation_score(folder: Path) -> float:
    """A Crypto Module's SAM validation score, from its card (NaN when it has none)."""
    from strategies.registry import read_card

    score = ((read_card(folder).get("scores") or {}).get("validation") or {}).get("sam")
    return math.nan if score is None else float(score)


def _untrained(folder: Path) -> bool:
    from backtest.diagnostics import untrained_checkpoint

    return untrained_checkpoint(folder)


@dataclass(frozen=True)
class BacktestJob:
    """One engine run of the walk-forward (picklable: it runs in a worker or a Ray task)."""

    cfg_json: dict
    portfolio: str
    policy: str
    coins: tuple[str, ...]
    seed: int | None
    folds: tuple[FoldSpan, ...]
    models: dict[int, dict[str, Path]]
    start_ms: int
    end_ms: int
    members: dict[int, dict[str, tuple[Path, ...]]] = field(default_factory=dict)
    """For a run of seed bags, per fold the bag's folders per coin (empty for one seed)."""

    def folders(self, coin: str) -> list[Path]:
        """Every folder of ``coin`` the run trades, all folds and (a bag's) seeds."""
        if self.members:
            return [f for fold in self.members.values() for f in fold[coin]]
        return [fold[coin] for fold in self.models.values()]


JobResult = tuple[RunResult, list[ModuleDecision], list[VariantWeights | GrossExposure]]


def run_backtest_job(job: BacktestJob) -> JobResult:
    """Replay the stores through the engine with the job's policy; the run, its module
    decisions and (MARS) the controller's and manager's notes. Top-level, for
    :func:`backtest.compute.fan_out` (call it where no event loop runs; the stores must be
    reachable where it runs, as they are for a pool or a local Ray)."""
    import asyncio

    async def go() -> JobResult:
        cfg = AppConfig.model_validate(job.cfg_json)
        async with (
            await MarketStore.open(cfg.data.market_path) as market,
            await MetricStore.open(cfg.data.metrics_path) as metrics,
        ):
            driver = await replay_driver(cfg, market, metrics, job.coins, job.start_ms, job.end_ms)
        context = PolicyContext(cfg, job.coins, job.seed, job.folds, job.models, job.members)
        recording = RecordingPolicy(policy_builder(job.policy).build(context))
        result = await run_backtest(cfg, recording, driver, name=job.policy)
        return result, recording.decisions, recording.regime

    return asyncio.run(go())


def _backtest_jobs(
    cfg: AppConfig,
    spec: WalkForwardSpec,
    folds: Sequence[Fold],
    models: Mapping[tuple[int, str, int], Path],
    trains: bool,
) -> list[BacktestJob]:
    cfg_json = cfg.model_dump(mode="json")
    spans = tuple(f.span for f in folds)
    start, end = folds[0].start_ms, folds[-1].end_ms
    jobs = []
    for name in spec.portfolios:
        members = PORTFOLIOS[name]
        for unit in spec.units if trains else ((None,),):
            seed = unit[0]
            fold_models = (
                {f.index: {c: models[f.index, c, seed] for c in members} for f in folds}
                if trains
                else {}
            )
            fold_members = (
                {
                    f.index: {c: tuple(models[f.index, c, s] for s in unit) for c in members}
                    for f in folds
                }
                if trains and len(unit) > 1
                else {}
            )
            jobs.append(
                BacktestJob(
                    cfg_json,
                    name,
                    spec.policy,
                    members,
                    seed,
                    spans,
                    fold_models,
                    start,
                    end,
                    fold_members,
                )
            )
        for baseline in baseline_names(members):
            if baseline != spec.policy:
                jobs.append(
                    BacktestJob(cfg_json, name, baseline, members, None, (), {}, start, end)
                )
    return jobs


def _folds(spec: WalkForwardSpec, inputs: Mapping[str, CoinInputs]) -> tuple[list[Fold], list[str]]:
    """The folds, checked against the data; notes on clipped training windows."""
    step_ms = {c: int(i.bars["open_time"].diff().min()) for c, i in inputs.items()}
    first = {c: int(i.bars["open_time"].iloc[0]) for c, i in inputs.items()}
    last_close = min(int(i.bars["open_time"].iloc[-1]) + step_ms[c] for c, i in inputs.items())
    lead = (spec.train_days + spec.val_days) * DAY_MS
    start = spec.start_ms
    if start is None:
        start = -(-(max(first.values()) + lead) // DAY_MS) * DAY_MS  # next UTC midnight
    end = min(spec.end_ms, last_close) if spec.end_ms is not None else last_close
    folds = plan_folds(start, end, spec.retrain_every_days, spec.train_days, spec.val_days)
    notes = [
        f"Out-of-sample span {ms_to_iso(folds[0].start_ms)[:10]} .. "
        f"{ms_to_iso(folds[-1].end_ms)[:16]} ({len(folds)} folds); the data ends "
        f"{ms_to_iso(last_close)[:16]}."
    ]
    for coin, begins in first.items():
        fold = folds[0]
        available = (fold.train[1] - max(begins, fold.train[0])) / DAY_MS
        if available < MIN_TRAIN_DAYS:
            raise DataRangeError(
                f"{coin}'s bars start {ms_to_iso(begins)[:10]}: the first fold's training window "
                f"{ms_to_iso(fold.train[0])[:10]} .. {ms_to_iso(fold.train[1])[:10]} holds "
                f"{max(available, 0):.0f} days of it, fewer than {MIN_TRAIN_DAYS}; start later "
                "(--start) or shorten --train-days/--val-days"
            )
        if begins > fold.train[0]:
            notes.append(
                f"{coin}: data starts {ms_to_iso(begins)[:10]}, so the first fold trains on "
                f"{available:.0f} of {spec.train_days} days."
            )
    return folds, notes


def _train_folds(
    cfg: AppConfig,
    inputs: Mapping[str, CoinInputs],
    folds: Sequence[Fold],
    seeds: Sequence[int],
    on_trained: Callable[[Fold, str, int, float], None] | None,
    trainer: str = "cm",
) -> tuple[dict[tuple[int, str, int], Path], int]:
    """Fit every fold's DRU per coin, train every (fold, coin, seed) module (``trainer``
    ``"cm"``) or every (fold, coin) ensemble of all seeds (``"mars"``) on ``[compute]``, save
    each under ``<models_dir>/fold_<k>``; returns the folders and how many came from the
    folder's cache (:class:`TrainingCache`: the same inputs, parameters and seeds trained
    before)."""
    root = Path(cfg.training.models_dir)
    cache = TrainingCache(root)
    folders: dict[tuple[int, str, int], Path] = {}
    keys: list[tuple[int, str, tuple[int, ...], str]] = []
    jobs: list[Any] = []
    reused = 0
    for fold in folds:
        windows = Windows(fold.train, fold.validation)
        for coin, coin_inputs in inputs.items():
            history = fold_history(cfg, coin_inputs, fold)
            groups = [(s,) for s in seeds] if trainer == "cm" else [tuple(seeds)]
            for group in groups:
                digest = training_digest(cfg, trainer, history, windows, group)
                hit = cache.get(digest)
                if hit is not None:
                    folders.update({(fold.index, coin, s): hit[s] for s in group})
                    reused += len(group)
                    continue
                keys.append((fold.index, coin, group, digest))
                if trainer == "cm":
                    cost = cfg.broker.trading_cost
                    jobs.append(TrainJob(history, windows, cfg.agents, group[0], cost))
                else:
                    jobs.append(
                        MarsTrainJob(
                            history, windows, cfg.agents, cfg.mars, group, cfg.broker.trading_cost
                        )
                    )

    def saved(index: int, trained: Any) -> None:
        fold_index, coin, group, digest = keys[index]
        where = root / f"fold_{fold_index}"
        if trainer == "cm":
            made = {group[0]: save_trained(cfg, trained, where)}
            seconds = {group[0]: trained.seconds}
        else:
            made = {t.seed: save_ensemble(where, t) for t in trained}
            seconds = {t.seed: t.seconds for t in trained}
        cache.put(digest, made)
        for seed, folder in made.items():
            folders[fold_index, coin, seed] = folder
            if on_trained is not None:
                on_trained(folds[fold_index], coin, seed, seconds[seed])

    fan_out(run_train_job if trainer == "cm" else run_mars_job, jobs, cfg.compute, on_result=saved)
    return folders, reused


def training_digest(
    cfg: AppConfig, trainer: str, history: CoinHistory, windows: Windows, seeds: Sequence[int]
) -> str:
    """A fingerprint of everything one training depends on: the trainer, its hyperparameters
    (for MARS, ``[mars]`` but its controller and manager, which replays fit), the trading cost,
    the windows, the seeds and the history's bars and features (bytes)."""
    import hashlib
    import json

    digest = hashlib.sha256()
    settings = {
        "trainer": trainer,
        "agents": cfg.agents.model_dump(mode="json"),
        # The controller and the manager are fitted during replays, not in training.
        "mars": (
            cfg.mars.model_dump(mode="json", exclude={"controller", "manager"})
            if trainer == "mars"
            else None
        ),
        "cost": cfg.broker.trading_cost,
        "windows": [list(windows.train), list(windows.validation)],
        "seeds": list(seeds),
        "coin": history.coin,
        "timeframe": history.timeframe,
        "feature_names": list(history.feature_names),
        "format": 1,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for array in (history.open_time, history.ohlcv, history.features, history.ready):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


class TrainingCache:
    """``<models_dir>/trainings.json``: which folders a training fingerprint produced, so a
    second walk-forward over the same models folder (``--models-dir``; e.g. ``mars`` then
    ``mars+manager``, which train the same ensembles) reuses them instead of training again."""

    FILE = "trainings.json"

    def __init__(self, root: Path) -> None:
        import json

        self.path = Path(root) / self.FILE
        self.entries: dict[str, dict[str, str]] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )

    def get(self, digest: str) -> dict[int, Path] | None:
        """The seed -> folder map of a fingerprint, if every folder still exists."""
        entry = self.entries.get(digest)
        if entry is None:
            return None
        folders = {int(seed): Path(folder) for seed, folder in entry.items()}
        return folders if all(f.is_dir() for f in folders.values()) else None

    def put(self, digest: str, folders: Mapping[int, Path]) -> None:
        """Remember ``folders`` for ``digest`` (written at once: an interrupted run keeps what
        it finished)."""
        import json

        self.entries[digest] = {str(seed): str(folder) for seed, folder in folders.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)


def slice_run(run: RunResult, start_ms: int, end_ms: int) -> RunResult:
    """The part of ``run`` from the close at ``start_ms`` (its equity there is the starting
    equity) to the close at ``end_ms`` (included), with the fills decided in between."""
    index = run.equity.index.to_numpy()
    keep = (index >= start_ms) & (index <= end_ms)
    trades = run.trades[(run.trades["ts"] >= start_ms) & (run.trades["ts"] < end_ms)]
    equity = run.equity[keep]
    fees = float(trades["fee"].sum()) if len(trades) else 0.0
    return RunResult(
        name=run.name,
        timeframe=run.timeframe,
        quote=run.quote,
        initial_cash=float(equity.iloc[0]) if len(equity) else run.initial_cash,
        equity=equity,
        weights=run.weights[(run.weights.index >= start_ms) & (run.weights.index <= end_ms)],
        trades=trades,
        rejections=run.rejections,
        refusals=run.refusals,
        fees_paid=fees,
    )


def seed_matrix(runs: Mapping[int, RunResult]) -> np.ndarray:
    """``(days, seeds)`` daily returns of the policy's runs, on their common days."""
    from backtest.metrics import daily_returns

    series = [daily_returns(run) for run in runs.values()]
    common = series[0].index
    for s in series[1:]:
        common = common.intersection(s.index)
    return np.column_stack([s.loc[common].to_numpy() for s in series])
