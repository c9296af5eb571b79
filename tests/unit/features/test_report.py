"""The selection report: JSON data with the spec inside, a heatmap, a text rendering."""

from __future__ import annotations

import json
from pathlib import Path

from strategies.features.pipeline import FeatureSpec
from strategies.features.report import (
    format_selection_report,
    selection_report,
    write_selection_report,
)
from tests.unit.features.conftest import fit_toy_spec
from tests.unit.features.toy_market import ToyMarket


def test_report_lists_every_candidate_with_chosen_ones_first_in_rank_order(
    toy_spec: FeatureSpec,
) -> None:
    report = selection_report(toy_spec)
    assert report["chosen"] == list(toy_spec.selection.kept)
    ranked = [c["metric_id"] for c in report["candidates"] if c["chosen"]]
    assert ranked == report["chosen"]
    assert [c["metric_id"] for c in report["candidates"]][: len(ranked)] == ranked
    assert len(report["candidates"]) == report["pool_size"] == len(toy_spec.selection.pool)
    first = report["candidates"][0]
    assert set(first["correlations"]) == {"12", "24", "48"}
    assert report["refinement"]["n_components"] == toy_spec.width
    assert report["refinement"]["explained_variance_at_fit"] >= 0.8
    assert report["note"] is None


def test_written_report_holds_data_that_rebuilds_the_spec_and_a_png(
    toy_spec: FeatureSpec, tmp_path: Path
) -> None:
    paths = write_selection_report(toy_spec, tmp_path / "AAA")
    assert [p.name for p in paths] == ["selection.json", "correlation_heatmap.png"]
    data = json.loads(paths[0].read_text())
    assert FeatureSpec.from_dict(data["spec"]) == toy_spec
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_selection_report(data)
    assert text.startswith("AAA: training") and "PCA: k =" in text


def test_report_of_an_empty_pool_says_why(toy: ToyMarket, tmp_path: Path) -> None:
    spec = fit_toy_spec(toy, pool=[])
    report = selection_report(spec)
    assert report["chosen"] == [] and report["candidates"] == []
    assert "pool is empty" in report["note"]
    paths = write_selection_report(spec, tmp_path)
    assert paths[1].stat().st_size > 0
    assert "pool is empty" in format_selection_report(report)
