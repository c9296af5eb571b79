"""The Agent Updating Unit on real stores and real (tiny) training: the schedule fires on a
simulated clock, the validation gate rejects a genuinely worse candidate and accepts a good or
equal one, rollback restores the previous module, and retraining runs in another process while
the event loop keeps ticking."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bot.clock import SimClock
from bot.feed.resample import resample_candles
from bot.feed.synthetic import generate_market, write_market
from bot.store import MarketStore, MetricStore
from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from config.schema import (
    AppConfig,
    DataConfig,
    MarketConfig,
    TrainingConfig,
    UpdatingConfig,
)
from strategies import versions
from strategies.agents.train import Windows, train_cm
from strategies.agents.trained import TrainedCryptoModule
from strategies.crypto_module import CryptoModule
from strategies.features.inputs import CoinInputs
from strategies.registry import CARD, read_card
from strategies.updating import (
    ModuleUpdater,
    RetrainSchedule,
    ValidationGate,
    causal_inputs,
    retrain_job,
    retrain_windows,
)
from tests.unit.agents.conftest import COST, TINY

UPDATING = UpdatingConfig(
    enabled=True,
    every_days=7,
    train_days=180,
    validation_days=30,
    gate_days=30,
    tolerance=0.02,
    stress_scenarios=(),  # the stress gate has its own tests (test_stress_gate.py)
)


# --- trainers with a known policy (top-level: they travel to the worker process) ---------------


def _constant_policy(trained: TrainedCryptoModule, action: int) -> TrainedCryptoModule:
    """The trained module with its SAM's head replaced so that it always picks ``action``
    (0 = all cash, 1 = all coin) whatever it sees: a policy whose score we know."""
    state = trained.sam.state_dict
    state["head.weight"].zero_()
    state["head.bias"].copy_(torch.tensor([1.0, 0.0] if action == 0 else [0.0, 1.0]))
    return trained


def always_cash_trainer(*args, **kwargs) -> TrainedCryptoModule:
    """``train_cm``, then a SAM that never buys (net log return 0 on any window)."""
    return _constant_policy(train_cm(*args, **kwargs), 0)


def always_coin_trainer(*args, **kwargs) -> TrainedCryptoModule:
    """``train_cm``, then a SAM that always holds the coin (buy & hold: ruinous in a fall)."""
    return _constant_policy(train_cm(*args, **kwargs), 1)


# --- a market in the stores ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def market_dir(tmp_path_factory) -> tuple[Path, int, int, float, float]:
    """Stores holding one synthetic coin (ETH, 2020-07 .. 2021-10), and the ends of its most
    falling and most rising 30-day windows (day boundaries) with ETH's log return over each."""
    market = generate_market(["ETH"], to_ms("2020-07-01"), to_ms("2021-11-01"), 11, scenarios=())
    data = tmp_path_factory.mktemp("auu") / "data"

    async def store() -> None:
        data.mkdir(parents=True)
        async with (
            await MarketStore.open(data / "market.db") as bars,
            await MetricStore.open(data / "metrics.db") as metrics,
        ):
            await write_market(market, bars, metrics)

    asyncio.run(store())
    bars = resample_candles(market.candles["ETH"], "1h", "6h").frame
    close_at = pd.Series(bars["close"].to_numpy(), index=bars["open_time"].to_numpy() + 6 * HOUR_MS)
    ends = np.arange(to_ms("2021-03-01"), to_ms("2021-10-15"), DAY_MS)
    change = np.log(close_at.loc[ends].to_numpy() / close_at.loc[ends - 30 * DAY_MS].to_numpy())
    falling, rising = int(ends[change.argmin()]), int(ends[change.argmax()])
    assert change.min() < -0.1 and change.max() > 0.1  # a real fall and a real rise to test on
    return data, falling, rising, float(change.min()), float(change.max())


def make_cfg(data: Path, models: Path, coins: tuple[str, ...] = ("ETH",)) -> AppConfig:
    return AppConfig(
        data=DataConfig(dir=data),
        market=MarketConfig(coins=coins, start=date(2020, 7, 1), end=date(2021, 10, 31)),
        agents=TINY,
        training=TrainingConfig(models_dir=models),
        updating=UPDATING,
    )


@pytest.fixture(scope="module")
def worker():
    """One spawned worker process shared by the tests below (torch imported once)."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


# --- windows and causality ----------------------------------------------------------------------


def test_retrain_windows_roll_with_now_and_end_at_the_last_day_boundary() -> None:
    now = to_ms("2021-09-10") + 13 * HOUR_MS + 17  # mid-day, not on a bar close
    windows = retrain_windows(now, UPDATING, "6h")
    end = to_ms("2021-09-10")
    assert windows.test == (end - 30 * DAY_MS, end)  # the gate window
    assert windows.validation == (end - 60 * DAY_MS, end - 30 * DAY_MS)  # checkpoint selection
    assert windows.train == (end - 240 * DAY_MS, end - 60 * DAY_MS)
    assert windows.test[1] <= now
    assert retrain_windows(end, UPDATING, "6h") == windows  # at the boundary itself
    assert retrain_windows(now + DAY_MS, UPDATING, "6h").test[1] == end + DAY_MS


def test_causal_inputs_drop_bars_closing_and_metrics_known_after_the_end() -> None:
    end = to_ms("2021-01-10")
    open_time = np.arange(to_ms("2021-01-08"), to_ms("2021-01-12"), 6 * HOUR_MS)
    bars = pd.DataFrame({"open_time": open_time, "close": 1.0})
    metrics = pd.DataFrame(
        {
            "asset": "ETH",
            "name": "m",
            "observed_at": [end - 2 * DAY_MS, end - DAY_MS, end],
            "known_at": [end - DAY_MS, end + HOUR_MS, end + DAY_MS],
            "value": [1.0, 2.0, 3.0],
        }
    )
    cut = causal_inputs(CoinInputs("ETH", "6h", bars, metrics), end)
    assert int(cut.bars["open_time"].max()) + 6 * HOUR_MS == end
    assert cut.metrics["value"].tolist() == [1.0]


def test_a_retraining_reads_nothing_after_now(market_dir, tmp_path: Path) -> None:
    """The job on stores whose data after ``now`` is scrambled trains the same candidate."""
    data, falling, *_ = market_dir
    now = falling + 5 * HOUR_MS

    async def scrambled_copy() -> Path:
        copy = tmp_path / "scrambled"
        copy.mkdir()
        async with (
            await MarketStore.open(data / "market.db") as src_bars,
            await MetricStore.open(data / "metrics.db") as src_metrics,
            await MarketStore.open(copy / "market.db") as bars,
            await MetricStore.open(copy / "metrics.db") as metrics,
        ):
            candles = await src_bars.read_candles("synthetic", "ETH/USDT", "1h")
            later = candles["open_time"] >= now - HOUR_MS  # from the bar still open at now
            candles.loc[later, ["open", "high", "low", "close"]] *= 3.0
            await bars.upsert_candles("synthetic", "ETH/USDT", "1h", candles.to_numpy())
            frame = await src_metrics.read_metrics()
            frame.loc[frame["known_at"] > now, "value"] *= -7.0
            await metrics.upsert_frame(frame, "synthetic")
        return copy

    copy = asyncio.run(scrambled_copy())
    results = [
        retrain_job(make_cfg(d, tmp_path / name).model_dump(mode="json"), "ETH", now)
        for d, name in ((data, "a"), (copy, "b"))
    ]
    a, b = results
    assert a["selected_metrics"] == b["selected_metrics"]
    assert a["candidate_score"] == b["candidate_score"]
    weights = [
        torch.load(Path(r["candidate_folder"]) / "weights_sam.pt", weights_only=True)
        for r in results
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- the gate -----------------------------------------------------------------------------------


def test_validation_gate_rule() -> None:
    gate = ValidationGate(0.02)
    assert gate.decide(0.10, 0.05).accepted
    assert gate.decide(0.04, 0.05).accepted  # within tolerance
    assert gate.decide(0.05, 0.05).accepted  # equal
    rejected = gate.decide(0.0, 0.05)
    assert not rejected.accepted and "< active +0.0500 - tolerance 0.02" in rejected.reason
    assert gate.decide(-1.0, None).accepted  # nothing to compare with
    assert not gate.decide(float("nan"), 0.0).accepted
    with pytest.raises(ValueError):
        ValidationGate(-0.1)


async def test_a_worse_candidate_is_rejected_and_a_good_one_accepted_then_rolled_back(
    market_dir, worker, tmp_path: Path
) -> None:
    data, falling, rising, fall, rise = market_dir
    cfg = make_cfg(data, tmp_path / "models")
    root = cfg.training.models_dir

    # The running module never buys: 0 on every window.
    first = await ModuleUpdater(cfg, executor=worker, trainer=always_cash_trainer).retrain(
        "ETH", falling - 20 * DAY_MS
    )
    assert first.accepted and first.incumbent_id is None and first.swap
    incumbent = first.active_id
    assert versions.active_model(root, "ETH") == incumbent == first.candidate_id

    # A candidate that holds the coin through the fall: really scored, really worse, rejected.
    holder = ModuleUpdater(cfg, executor=worker, trainer=always_coin_trainer)
    worse = await holder.retrain("ETH", falling)
    assert worse.incumbent_id == incumbent and worse.incumbent_score == 0.0
    assert worse.candidate_score == pytest.approx(fall + np.log1p(-COST), abs=0.02)
    assert worse.candidate_score == pytest.approx(worse.buy_and_hold_score, abs=1e-12)
    assert worse.candidate_score < worse.incumbent_score - UPDATING.tolerance
    assert not worse.accepted and not worse.swap and worse.reason.startswith("rejected: ")
    assert versions.active_model(root, "ETH") == incumbent  # the old one stays
    assert (root / "ETH" / worse.candidate_id / CARD).exists()  # kept, inactive
    assert versions.last_retrain_ms(root, "ETH") == falling
    assert versions.retrains(root, "ETH")[-1].outcome["reason"] == worse.reason

    # The same holder over a rise: better than staying in cash, accepted and activated.
    better = await holder.retrain("ETH", rising)
    assert better.candidate_score == pytest.approx(rise + np.log1p(-COST), abs=0.02)
    assert better.accepted and better.swap and better.incumbent_score == 0.0
    assert versions.active_model(root, "ETH") == better.candidate_id == better.active_id
    module = CryptoModule.load(better.active_folder, "ETH/USDT")  # what the daemon swaps in
    assert module.model_id == better.candidate_id

    # An equal candidate (the same policy again) passes the gate too.
    equal = await holder.retrain("ETH", rising + 7 * DAY_MS)
    assert equal.accepted
    assert equal.candidate_score == pytest.approx(equal.incumbent_score, abs=1e-12)

    print(
        f"\nfall {fall:+.4f}: holder {worse.candidate_score:+.4f} vs cash "
        f"{worse.incumbent_score:+.4f} -> {worse.reason}\n"
        f"rise {rise:+.4f}: holder {better.candidate_score:+.4f} vs cash "
        f"{better.incumbent_score:+.4f} -> {better.reason}"
    )

    # Rollback restores the previous active id; history lists every version.
    assert versions.rollback(root, "ETH", rising + 8 * DAY_MS) == better.candidate_id
    assert versions.rollback(root, "ETH", rising + 9 * DAY_MS) == incumbent
    assert [(a.model_id, a.reason) for a in versions.history(root, "ETH")] == [
        (incumbent, "initial"),
        (better.candidate_id, "retrain"),
        (equal.candidate_id, "retrain"),
        (better.candidate_id, "rollback"),
        (incumbent, "rollback"),
    ]
    accepted = versions.history(root, "ETH")[1]
    assert accepted.validation_score == better.candidate_score
    assert accepted.incumbent_score == 0.0
    assert len(versions.retrains(root, "ETH")) == 4


async def test_a_failed_retraining_is_recorded_and_changes_nothing(
    market_dir, worker, tmp_path: Path
) -> None:
    data, falling, *_ = market_dir
    cfg = make_cfg(data, tmp_path / "models", coins=("ETH", "SOL"))  # no SOL bars stored
    updater = ModuleUpdater(cfg, executor=worker)
    assert updater.due(falling) == ["ETH", "SOL"]  # no model yet: due at once
    outcome = await updater.retrain("SOL", falling)
    assert not outcome.accepted and outcome.active_id is None
    assert "MissingDataError" in outcome.error and "no 6h bars of SOL/USDT" in outcome.reason
    assert versions.last_retrain_ms(cfg.training.models_dir, "SOL") == falling
    assert updater.due(falling + DAY_MS) == ["ETH"]  # not retried every cycle
    assert updater.due(falling + 7 * DAY_MS) == ["ETH", "SOL"]


# --- schedule -----------------------------------------------------------------------------------


def fake_registry_model(root: Path, coin: str, model_id: str, validation_end_ms: int) -> None:
    folder = root / coin / model_id
    folder.mkdir(parents=True)
    card = {
        "id": model_id,
        "coin": coin,
        "created_at": "2030-01-01T00:00:00Z",  # a wall-clock time the schedule must ignore
        "data_ranges": {"validation": {"ms": [validation_end_ms - 30 * DAY_MS, validation_end_ms]}},
    }
    (folder / CARD).write_text(json.dumps(card))


def test_the_schedule_fires_every_every_days_on_a_simulated_clock(tmp_path: Path) -> None:
    root = tmp_path / "models"
    trained_through = to_ms("2021-06-01")
    fake_registry_model(root, "ETH", "ETH-1", trained_through)
    fake_registry_model(root, "BTC", "BTC-1", trained_through + 3 * DAY_MS)
    cfg = make_cfg(tmp_path, root, coins=("BTC", "ETH", "SOL"))
    clock = SimClock(trained_through)
    schedule = RetrainSchedule(root, cfg.market.coins, every_days=7)

    assert schedule.due(clock.now_ms()) == ["SOL"]  # no model at all: due at once
    clock.advance_to(trained_through + 7 * DAY_MS - 1)
    assert schedule.due(clock.now_ms()) == ["SOL"]
    clock.advance_to(trained_through + 7 * DAY_MS)
    assert schedule.due(clock.now_ms()) == ["ETH", "SOL"]

    # ETH retrained now: due again 7 days later, by this schedule and by any new one.
    retrained = clock.now_ms()
    versions.record_retrain(root, "ETH", retrained, {"reason": "accepted"})
    clock.advance_to(trained_through + 10 * DAY_MS)
    assert schedule.due(clock.now_ms()) == ["BTC", "SOL"]
    clock.advance_to(retrained + 7 * DAY_MS - 1)
    restarted = ModuleUpdater(cfg)  # a restarted daemon reading the same registry
    assert "ETH" not in restarted.due(clock.now_ms())
    assert restarted.schedule.next_due_ms("ETH") == schedule.next_due_ms("ETH")
    assert restarted.schedule.next_due_ms("ETH") == retrained + 7 * DAY_MS
    clock.advance_to(retrained + 7 * DAY_MS)
    assert restarted.due(clock.now_ms()) == ["BTC", "ETH", "SOL"]
    assert RetrainSchedule(root, ("ETH",), 7).due(clock.now_ms()) == ["ETH"]

    disabled = ModuleUpdater(cfg.model_copy(update={"updating": UpdatingConfig(enabled=False)}))
    assert disabled.due(clock.now_ms()) == []
    restarted.close()
    disabled.close()


# --- off the event loop -------------------------------------------------------------------------


async def test_retraining_runs_in_another_process_while_the_loop_keeps_ticking(
    market_dir, tmp_path: Path
) -> None:
    data, falling, *_ = market_dir
    cfg = make_cfg(data, tmp_path / "models")
    now = falling + 7 * DAY_MS
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.05)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    with ModuleUpdater(cfg) as updater:  # its own spawned worker, real train_cm
        assert updater.due(now) == ["ETH"]
        ticker = asyncio.create_task(tick())
        task = asyncio.create_task(updater.retrain("ETH", now))
        async with asyncio.timeout(600):  # a hang guard: the wait is for the state below
            while not updater.running and not task.done():
                await asyncio.sleep(0.01)
        assert updater.running == {"ETH"} and updater.due(now) == []  # no double start
        started = time.monotonic()
        outcome = await task
        seconds = time.monotonic() - started
        done.set()
        await ticker
    print(f"\nretraining took {seconds:.2f} s; {len(gaps)} ticks, longest gap {max(gaps):.3f} s")
    assert outcome.pid is not None and outcome.pid != os.getpid()
    # A loop blocked by the retraining would show one gap as long as the retraining; a loaded
    # machine only stretches the 50 ms ticks a little.
    assert len(gaps) >= 4 and max(gaps) < max(0.5, seconds / 2)
    assert outcome.accepted and outcome.incumbent_id is None and outcome.swap
    card = read_card(outcome.active_folder)
    # The gate's score is the measure training reports, on the gate window (training's "test"),
    # not on the validation window the checkpoint was selected on.
    assert outcome.candidate_score == pytest.approx(card["scores"]["test"]["sam"], abs=1e-9)
    assert card["data_ranges"]["validation"]["ms"][1] <= outcome.windows.test[0]
    assert card["created_at"].startswith("2021-")  # stamped with the daemon clock, not the wall
    assert card["data_ranges"]["validation"]["ms"][1] <= now
    assert Windows(*[tuple(w) for w in outcome.to_dict()["windows"].values()]) == outcome.windows
    assert versions.history(cfg.training.models_dir, "ETH")[0].reason == "initial"
    assert updater.due(now + 7 * DAY_MS - 1) == [] and updater.due(now + 7 * DAY_MS) == ["ETH"]
