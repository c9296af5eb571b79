"""The Agent Updating Unit's promotion gate: stress scenarios grafted onto recent bars refuse a
fragile candidate (always all-in) and pass a robust one; the candidate is compared with the
running module on a window it was not selected on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bot.timeframes import DAY_MS, HOUR_MS, to_ms
from config.schema import UpdatingConfig
from strategies import versions
from strategies.registry import load_crypto_module, read_card
from strategies.stress import StressGate, graft_scenario
from strategies.updating import ModuleUpdater, retrain_job
from tests.integration.test_updating import (  # noqa: F401 (fixtures)
    UPDATING,
    always_cash_trainer,
    always_coin_trainer,
    make_cfg,
    market_dir,
    worker,
)

STRESSED = UPDATING.model_copy(
    update={
        "tolerance": 1.0,  # isolate the stress gate: the comparison lets both candidates through
        "stress_scenarios": ("covid_crash", "luna_collapse", "flash_crash"),
        "stress_days": 60,
        "stress_max_drawdown": 0.35,
        "stress_max_loss": 0.25,
    }
)


def _flat_bars(days: int = 60) -> pd.DataFrame:
    t = np.arange(to_ms("2021-01-01"), to_ms("2021-01-01") + days * DAY_MS, 6 * HOUR_MS)
    return pd.DataFrame(
        {"open_time": t, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.0, "volume": 5.0}
    )


def test_scenarios_grafted_onto_bars_keep_their_shapes() -> None:
    bars = _flat_bars()
    start = to_ms("2021-01-13")
    before = bars["open_time"] < start
    for name in ("covid_crash", "luna_collapse", "flash_crash"):
        grafted = graft_scenario(bars, name, start, seed=1)
        pd.testing.assert_frame_equal(grafted[before], bars[before])  # the past is untouched
        assert (grafted["volume"] == 5.0).all()
        close = grafted["close"].to_numpy()
        two_days = grafted["open_time"].to_numpy() < start + 2 * DAY_MS
        if name == "covid_crash":
            assert 45 <= close[two_days].min() <= 58  # -42..-55% in two days
            assert close.min() < close[-1] < 100  # partly recovered, still down
        elif name == "luna_collapse":
            assert close[-1] < 0.25  # -99.8% and more: gone
        else:
            assert grafted["low"].min() <= 68 and close.min() > 96  # an intra-bar flash crash
        assert (grafted["low"] <= grafted[["open", "close"]].min(axis=1)).all()
        assert (grafted["high"] >= grafted[["open", "close"]].max(axis=1)).all()


def test_stress_gate_rule() -> None:
    gate = StressGate(0.35, 0.25)
    ok = gate.decide([{"scenario": "covid_crash", "drawdown": 0.1, "loss": 0.05}])
    assert ok.passed and "worst drawdown 10.0%" in ok.reason
    bad = gate.decide([{"scenario": "luna_collapse", "drawdown": 0.99, "loss": 0.99}])
    assert not bad.passed
    assert (
        bad.reason == "stress: luna_collapse drawdown 99.0% > 35%; luna_collapse loss 99.0% > 25%"
    )


async def test_the_stress_gate_refuses_an_all_in_candidate_and_passes_a_robust_one(
    market_dir,  # noqa: F811
    worker,  # noqa: F811
    tmp_path: Path,
) -> None:
    data, falling, rising, *_ = market_dir
    cfg = make_cfg(data, tmp_path / "models").model_copy(update={"updating": STRESSED})
    root = cfg.training.models_dir

    robust = await ModuleUpdater(cfg, executor=worker, trainer=always_cash_trainer).retrain(
        "ETH", falling
    )
    assert robust.accepted and robust.swap, robust.reason
    assert [r["scenario"] for r in robust.stress] == list(STRESSED.stress_scenarios)
    assert all(r["drawdown"] == 0.0 and r["coin_share"] == 0.0 for r in robust.stress)
    assert "3 scenario(s) passed" in robust.reason

    # Always all-in: better than cash over the rise, so the comparison alone would promote it.
    fragile = await ModuleUpdater(cfg, executor=worker, trainer=always_coin_trainer).retrain(
        "ETH", rising
    )
    assert fragile.candidate_score > fragile.incumbent_score  # it won the comparison...
    assert not fragile.accepted and not fragile.swap  # ...and the stress gate refused it
    by_name = {r["scenario"]: r for r in fragile.stress}
    assert by_name["covid_crash"]["drawdown"] > 0.35 and by_name["luna_collapse"]["loss"] > 0.95
    assert all(r["coin_share"] == 1.0 for r in fragile.stress)
    assert "stress: covid_crash drawdown" in fragile.reason
    assert "luna_collapse loss" in fragile.reason
    assert versions.active_model(root, "ETH") == robust.active_id  # the robust one stays
    recorded = versions.retrains(root, "ETH")[-1].outcome  # the reason is in the history
    assert recorded["reason"] == fragile.reason and len(recorded["stress"]) == 3
    print(f"\nrobust: {robust.reason}\nfragile: {fragile.reason}")


def test_the_gate_compares_on_a_window_the_candidate_was_not_selected_on(
    market_dir,  # noqa: F811
    tmp_path: Path,
) -> None:
    data, _, rising, *_ = market_dir
    updating = UpdatingConfig(**{**UPDATING.model_dump(), "gate_days": 14})
    cfg = make_cfg(data, tmp_path / "models").model_copy(update={"updating": updating})
    result = retrain_job(cfg.model_dump(mode="json"), "ETH", rising, always_coin_trainer)
    train, validation, gate = (result["windows"][k] for k in ("train", "validation", "gate"))
    assert train[1] == validation[0] and validation[1] == gate[0] and gate[1] == rising
    assert gate[1] - gate[0] == 14 * DAY_MS
    card = read_card(Path(result["candidate_folder"]))
    # The checkpoint was chosen on the validation window; the gate's score is on the gate window.
    assert card["data_ranges"]["validation"]["ms"][1] <= gate[0]
    assert result["candidate_training_score"] == card["scores"]["validation"]["sam"]
    # an always-in candidate scores buy & hold: on the gate bars, not on the selection bars
    assert result["candidate_score"] == pytest.approx(result["buy_and_hold_score"], abs=1e-12)
    assert result["candidate_score"] != pytest.approx(result["candidate_training_score"], abs=1e-6)
    assert load_crypto_module(Path(result["candidate_folder"])).id == result["candidate_id"]
