"""Artifacts: one folder per module, weights_only loading, a clear refusal of a wrong schema."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import torch

from config.schema import AppConfig
from strategies.agents.params import TrainingConfig
from strategies.agents.train import train_cm
from strategies.registry import (
    CARD,
    EAM_WEIGHTS,
    SAM_WEIGHTS,
    FeatureSchemaMismatch,
    ModelNotFound,
    list_models,
    load_crypto_module,
    save_crypto_module,
    show_model,
)
from tests.unit.agents.conftest import COST, TINY, TINY_WINDOWS


@pytest.fixture(scope="module")
def trained(history, windows):
    return train_cm(history, windows, TINY, seed=3, cost=COST)


@pytest.fixture
def folder(trained, tmp_path):
    return save_crypto_module(
        tmp_path,
        trained,
        config=AppConfig(windows=TINY_WINDOWS),
        training=TrainingConfig(seeds=(3,)),
        exchange="synthetic",
        symbol="ETH/USDT",
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_artifact_folder_explains_itself(folder, trained, tmp_path):
    assert folder == tmp_path / "ETH" / "ETH-20240102T030405-s3"
    assert {p.name for p in folder.iterdir()} >= {CARD, EAM_WEIGHTS, SAM_WEIGHTS}
    card = json.loads((folder / CARD).read_text())
    assert card["seed"] == 3 and card["coin"] == "ETH" and len(card["config_hash"]) == 16
    assert card["params"]["window"] == TINY.window
    assert card["feature_spec"]["selection"]["kept"] == list(trained.feature_spec.metric_ids)
    assert card["feature_spec"]["refiner"]["n_components"] == trained.schema.n_features - 5
    assert card["feature_schema"]["metric_features"] == list(trained.schema.metric_features)
    assert set(card["data_ranges"]) == {"bars", "train", "validation", "test"}
    assert card["data_ranges"]["train"]["first"].startswith("2021-01-01")
    assert set(card["versions"]) >= {"python", "torch", "numpy"}
    assert card["scores"]["validation"]["sam"] == pytest.approx(trained.sam.best_validation)
    assert card["windows"]["train"]["end"] == "2021-06-30"
    assert card["training"]["seeds"] == [3]
    # weights are plain state_dicts, readable without unpickling code
    state = torch.load(folder / SAM_WEIGHTS, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in trained.sam.state_dict.items())


def test_load_rebuilds_inference_networks(folder, trained):
    model = load_crypto_module(folder, expected=trained.schema)
    assert model.id == folder.name and model.coin == "ETH"
    assert model.eam is not None and not model.sam.training
    assert not any(p.requires_grad for p in model.sam.parameters())
    assert model.feature_spec == trained.feature_spec
    for name, tensor in model.sam.state_dict().items():
        assert torch.equal(tensor, trained.sam.state_dict[name])


def test_load_refuses_a_mismatched_feature_schema_naming_the_fields(folder, trained):
    expected = replace(trained.schema, window=50, timeframe="1h")
    with pytest.raises(FeatureSchemaMismatch) as error:
        load_crypto_module(folder, expected=expected)
    message = str(error.value)
    assert folder.name in message
    assert f"window: {TINY.window} != 50" in message and "timeframe: '6h' != '1h'" in message
    card = json.loads((folder / CARD).read_text())
    card["feature_schema"]["version"] = 999
    (folder / CARD).write_text(json.dumps(card))
    with pytest.raises(FeatureSchemaMismatch, match="version: 999 != 1"):
        load_crypto_module(folder)


def test_list_and_show(folder, tmp_path):
    (tmp_path / "ETH" / "half-written").mkdir()  # a crashed run: no cm.json, not listed
    models = list_models(tmp_path)
    assert [m.id for m in models] == [folder.name]
    assert models[0].seed == 3 and models[0].timeframe == "6h"
    shown = show_model(tmp_path, folder.name)
    assert shown["id"] == folder.name and CARD in shown["files"]
    with pytest.raises(ModelNotFound, match="known: ETH-20240102T030405-s3"):
        show_model(tmp_path, "nope")
