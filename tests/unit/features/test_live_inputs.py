"""The metric series the daemon refreshes before the policy is built, read from the cards."""

from __future__ import annotations

import json
from pathlib import Path

from bot.cli.live_run import policy_inputs
from config.schema import AppConfig
from strategies.features.pipeline import FeatureSpec
from strategies.live import spec_inputs


def mars_config(models: Path) -> AppConfig:
    return AppConfig.model_validate(
        {
            "market": {"coins": ["AAA"]},
            "training": {"models_dir": str(models)},
            "live": {"policy": "mars"},
        }
    )


def test_a_mars_daemon_refreshes_the_metrics_its_ensembles_read(
    tmp_path: Path, toy_spec: FeatureSpec
) -> None:
    folder = tmp_path / "mars" / "AAA" / "AAA-mars-1"
    folder.mkdir(parents=True)
    card = {"id": "AAA-mars-1", "created_at": "2026", "feature_spec": toy_spec.to_dict()}
    (folder / "mars.json").write_text(json.dumps(card), encoding="utf-8")
    inputs = policy_inputs(mars_config(tmp_path))
    assert inputs == {"AAA": spec_inputs(toy_spec)} and inputs["AAA"]


def test_a_mars_daemon_without_ensembles_refreshes_nothing_and_is_refused_later(
    tmp_path: Path,
) -> None:
    assert policy_inputs(mars_config(tmp_path)) == {}
