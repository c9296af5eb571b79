"""A coin's version history in the registry: the active pointer, activations, rollback as undo,
the retraining record, and atomic, readable files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.timeframes import DAY_MS, to_ms
from strategies import versions
from strategies.registry import CARD, list_models

T0 = to_ms("2024-03-01")


def fake_model(root: Path, coin: str, model_id: str, created_at: str) -> Path:
    """A registry folder with the card fields the version code and ``list_models`` read."""
    folder = root / coin / model_id
    folder.mkdir(parents=True)
    card = {
        "id": model_id,
        "coin": coin,
        "created_at": created_at,
        "seed": 1,
        "feature_schema": {"timeframe": "6h"},
        "data_ranges": {"validation": {"ms": [T0 - 30 * DAY_MS, T0]}},
        "scores": {"validation": {"sam": 0.1, "buy_and_hold": 0.0}},
    }
    (folder / CARD).write_text(json.dumps(card))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    fake_model(root, "ETH", "ETH-A", "2024-01-01T00:00:00Z")
    fake_model(root, "ETH", "ETH-B", "2024-02-01T00:00:00Z")
    fake_model(root, "ETH", "ETH-C", "2024-03-01T00:00:00Z")
    fake_model(root, "BTC", "BTC-A", "2024-01-01T00:00:00Z")
    return root


def test_without_a_versions_file_the_newest_model_is_active(root: Path) -> None:
    assert versions.active_model(root, "ETH") == "ETH-C"
    assert versions.history(root, "ETH") == []
    assert versions.active_model(root, "SOL") is None
    assert versions.last_retrain_ms(root, "ETH") is None
    assert not versions.versions_path(root, "ETH").exists()  # reading writes nothing
    assert versions.CARD == CARD  # the registry's card name, repeated to stay torch-free


def test_activation_pins_the_implicit_model_first_and_moves_the_pointer(root: Path) -> None:
    entry = versions.activate(
        root,
        "ETH",
        "ETH-A",
        reason="manual",
        at_ms=T0,
        validation_score=0.25,
        incumbent_score=0.5,
    )
    assert entry.activated_at == "2024-03-01T00:00:00Z" and entry.validation_score == 0.25
    assert versions.active_model(root, "ETH") == "ETH-A"
    assert [(a.model_id, a.reason) for a in versions.history(root, "ETH")] == [
        ("ETH-C", "initial"),
        ("ETH-A", "manual"),
    ]
    state = json.loads(versions.versions_path(root, "ETH").read_text())
    assert state["active"] == "ETH-A" and state["coin"] == "ETH"
    # Activating the active model again records nothing new.
    versions.activate(root, "ETH", "ETH-A", reason="manual", at_ms=T0 + 1)
    assert len(versions.history(root, "ETH")) == 2
    assert versions.active_model(root, "BTC") == "BTC-A"  # other coins untouched


def test_a_newer_model_in_the_registry_does_not_take_over_once_pinned(root: Path) -> None:
    assert versions.pin_active(root, "ETH", T0) == "ETH-C"
    fake_model(root, "ETH", "ETH-D", "2024-04-01T00:00:00Z")  # e.g. a rejected candidate
    assert versions.active_model(root, "ETH") == "ETH-C"
    assert versions.pin_active(root, "ETH", T0 + 1) == "ETH-C"  # idempotent
    assert len(versions.history(root, "ETH")) == 1


def test_rollback_walks_back_like_undo_and_history_lists_every_version(root: Path) -> None:
    versions.pin_active(root, "ETH", T0)  # C
    versions.activate(root, "ETH", "ETH-A", reason="retrain", at_ms=T0 + DAY_MS)
    versions.activate(root, "ETH", "ETH-B", reason="retrain", at_ms=T0 + 2 * DAY_MS)
    assert versions.rollback(root, "ETH", T0 + 3 * DAY_MS) == "ETH-A"
    assert versions.active_model(root, "ETH") == "ETH-A"
    assert versions.rollback(root, "ETH", T0 + 4 * DAY_MS) == "ETH-C"
    assert versions.active_model(root, "ETH") == "ETH-C"
    with pytest.raises(versions.VersionError, match="no earlier version to roll back to"):
        versions.rollback(root, "ETH", T0 + 5 * DAY_MS)
    assert [(a.model_id, a.reason) for a in versions.history(root, "ETH")] == [
        ("ETH-C", "initial"),
        ("ETH-A", "retrain"),
        ("ETH-B", "retrain"),
        ("ETH-A", "rollback"),
        ("ETH-C", "rollback"),
    ]


def test_rollback_without_history_is_a_clear_error(root: Path) -> None:
    with pytest.raises(versions.VersionError, match=r"ETH: no earlier version .*active: ETH-C"):
        versions.rollback(root, "ETH", T0)
    assert not versions.versions_path(root, "ETH").exists()


def test_activating_an_unknown_or_foreign_model_is_refused(root: Path) -> None:
    unknown = r"no model 'ETH-Z' of ETH.*known: ETH-A, ETH-B, ETH-C"
    with pytest.raises(versions.UnknownModel, match=unknown):
        versions.activate(root, "ETH", "ETH-Z", reason="manual", at_ms=T0)
    (root / "ETH" / "BTC-A").mkdir()
    (root / "ETH" / "BTC-A" / CARD).write_text(json.dumps({"coin": "BTC"}))
    with pytest.raises(versions.UnknownModel, match="is a BTC model, not ETH"):
        versions.activate(root, "ETH", "BTC-A", reason="manual", at_ms=T0)
    with pytest.raises(ValueError, match="reason must be one of"):
        versions.activate(root, "ETH", "ETH-A", reason="whim", at_ms=T0)  # type: ignore[arg-type]
    assert versions.coin_of(root, "BTC-A") == "BTC"


def test_retraining_records_keep_the_latest_time_and_the_outcome(root: Path) -> None:
    versions.record_retrain(root, "ETH", T0, {"reason": "rejected", "score": float("nan")})
    versions.record_retrain(root, "ETH", T0 + DAY_MS, {"reason": "accepted", "path": root})
    assert versions.last_retrain_ms(root, "ETH") == T0 + DAY_MS
    records = versions.retrains(root, "ETH")
    assert [r.outcome["reason"] for r in records] == ["rejected", "accepted"]
    assert records[0].outcome["score"] is None  # strict JSON: NaN becomes null
    assert records[1].at == "2024-03-02T00:00:00Z"
    assert versions.last_retrain_ms(root, "BTC") is None
    # Recording a retraining does not pin or change the active model.
    assert versions.history(root, "ETH") == [] and versions.active_model(root, "ETH") == "ETH-C"


def test_writes_are_atomic_and_leave_no_temporary_files(root: Path, monkeypatch) -> None:
    versions.activate(root, "ETH", "ETH-A", reason="manual", at_ms=T0)
    before = versions.versions_path(root, "ETH").read_text()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        versions.activate(root, "ETH", "ETH-B", reason="manual", at_ms=T0 + 1)
    assert versions.versions_path(root, "ETH").read_text() == before  # old file intact
    assert sorted(p.name for p in (root / "ETH").iterdir() if p.name.startswith(".")) == [
        ".versions.lock"
    ]
    assert [m.id for m in list_models(root) if m.coin == "ETH"] == ["ETH-A", "ETH-B", "ETH-C"]


def test_a_corrupt_versions_file_is_reported_not_guessed(root: Path) -> None:
    versions.versions_path(root, "ETH").write_text("{not json")
    with pytest.raises(versions.VersionError, match=r"versions.json is not valid JSON"):
        versions.active_model(root, "ETH")
