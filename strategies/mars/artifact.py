"""MARS ensemble artifacts: one self-explaining folder per coin and seed.

Layout ``<root>/<coin>/<id>/`` (the live registry's root is ``<[training].models_dir>/mars``):

* ``weights_variants.pt``: the learned variants' stacked ``state_dict`` (loaded with
  ``weights_only=True``);
* ``mars.json``: the card: the variants (names, thresholds, penalties), the rule variants, the
  safety cost (drawdown, horizon), hyperparameters, the DRU's fitted spec and the feature schema,
  data ranges (the training window's end tells the controller which bars are out of sample),
  the trading cost, validation scores per variant, the network's shape, seed, versions;
* ``train_log.jsonl``: the training evaluations.

Loading checks the feature schema against what the code builds, like the Crypto Modules'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bot.timeframes import ms_to_iso
from config.schema import MarsConfig
from strategies.agents.observation import FeatureSchema
from strategies.features import FeatureSpec
from strategies.mars.network import VariantStack
from strategies.mars.training import TrainedEnsemble
from strategies.registry import FeatureSchemaMismatch, current_schema_errors, library_versions

CARD = "mars.json"
WEIGHTS = "weights_variants.pt"
TRAIN_LOG = "train_log.jsonl"
CARD_FORMAT = 1


@dataclass
class LoadedEnsemble:
    """A trained ensemble ready for inference."""

    id: str
    coin: str
    card: dict[str, Any]
    schema: FeatureSchema
    feature_spec: FeatureSpec | None
    network: VariantStack
    mars: MarsConfig
    path: Path

    @property
    def train_end_ms(self) -> int:
        """Close time of the last bar the variants trained on: later bars are out of sample."""
        return int(self.card["data_ranges"]["train"]["ms"][1])

    @property
    def trading_cost(self) -> float:
        """The trading cost rate the variants were trained against."""
        return float(self.card["trading_cost"])


def save_ensemble(
    root: Path, trained: TrainedEnsemble, *, created_at: datetime | None = None
) -> Path:
    """Write ``trained`` as ``<root>/<coin>/<id>/`` and return the folder."""
    created = (created_at or datetime.now(UTC)).replace(microsecond=0)
    model_id = f"{trained.coin}-mars-{created:%Y%m%dT%H%M%S}-s{trained.seed}"
    folder = Path(root) / trained.coin / model_id
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(root) / trained.coin / f"{model_id}-{suffix}"
    folder.mkdir(parents=True)
    torch.save(trained.network.state_dict(), folder / WEIGHTS)
    log = trained.extra.get("log", [])
    (folder / TRAIN_LOG).write_text("".join(json.dumps(row) + "\n" for row in log))
    card = {
        "format": CARD_FORMAT,
        "kind": "mars",
        "id": folder.name,
        "coin": trained.coin,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": trained.seed,
        "params": trained.params.model_dump(mode="json"),
        "mars": trained.mars.model_dump(mode="json"),
        "trading_cost": trained.cost,
        "feature_schema": trained.schema.to_dict(),
        "feature_spec": None if trained.feature_spec is None else trained.feature_spec.to_dict(),
        "network": trained.network.args(),
        "data_ranges": {
            name: {"first": ms_to_iso(first), "last": ms_to_iso(last), "ms": [first, last]}
            for name, (first, last) in trained.data_ranges.items()
        },
        "scores": trained.scores,
        "training_run": {**trained.training_run, "seconds": round(trained.seconds, 2)},
        "versions": library_versions(),
    }
    (folder / CARD).write_text(json.dumps(card, indent=1, allow_nan=False), encoding="utf-8")
    return folder


def read_card(folder: Path) -> dict[str, Any]:
    """The ``mars.json`` of an ensemble folder."""
    return json.loads((Path(folder) / CARD).read_text(encoding="utf-8"))


def is_ensemble(folder: Path) -> bool:
    """Whether ``folder`` holds a MARS ensemble (a ``mars.json``)."""
    return (Path(folder) / CARD).exists()


def load_ensemble(folder: Path, expected: FeatureSchema | None = None) -> LoadedEnsemble:
    """Load an ensemble folder for inference, refusing a feature schema that does not fit (see
    :func:`strategies.registry.load_crypto_module`)."""
    folder = Path(folder)
    card = read_card(folder)
    schema = FeatureSchema.from_dict(card["feature_schema"])
    spec = None if card.get("feature_spec") is None else FeatureSpec.from_dict(card["feature_spec"])
    errors = current_schema_errors(schema)
    if expected is not None:
        errors += schema.differences(expected)
    if errors:
        raise FeatureSchemaMismatch(
            f"ensemble {card['id']} ({folder}) does not fit the expected feature schema: "
            + "; ".join(errors)
        )
    args = dict(card["network"])
    network = VariantStack(
        args["members"],
        args["in_channels"],
        args["window"],
        tuple(args["channels"]),
        args["safety_hidden"],
    )
    network.load_state_dict(torch.load(folder / WEIGHTS, weights_only=True))
    network.eval().requires_grad_(False)
    return LoadedEnsemble(
        id=card["id"],
        coin=card["coin"],
        card=card,
        schema=schema,
        feature_spec=spec,
        network=network,
        mars=MarsConfig.model_validate(card["mars"]),
        path=folder,
    )


def newest_ensemble(root: Path, coin: str) -> Path | None:
    """``coin``'s most recently created ensemble under ``root`` (ties by id), or None."""
    cards = []
    for path in Path(root, coin).glob(f"*/{CARD}"):
        card = json.loads(path.read_text(encoding="utf-8"))
        cards.append((str(card.get("created_at", "")), path.parent.name))
    return Path(root, coin, max(cards)[1]) if cards else None
