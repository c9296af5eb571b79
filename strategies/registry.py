"""The model registry: one self-explaining folder per trained Crypto Module.

Layout: ``<root>/<coin>/<model id>/`` with

* ``weights_sam.pt`` and, when the module has an EAM, ``weights_eam.pt``: ``state_dict`` only,
  loaded with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed);
* ``cm.json``: the model card: hyperparameters, the DRU's fitted :class:`FeatureSpec` (selected
  metrics, normaliser and PCA parameters), the feature schema of the state, data ranges, seed,
  config hash, library versions, validation (and test) scores and the network shapes;
* ``train_log.jsonl``: losses and validation scores during training, one line per evaluation.

The model id carries the coin, the creation time and the seed (``BTC-20240101T120000-s1``).
Loading compares the stored feature schema with the one the code builds and with the one the
caller expects, and refuses a mismatch with a message naming every differing field; inference
needs only the networks (no optimiser, no replay buffer is ever saved).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bot.cpus import cpu_model
from bot.timeframes import ms_to_iso
from strategies.agents.networks import EamQNetwork, SamQNetwork
from strategies.agents.observation import OBSERVATION_VERSION, PRICE_FEATURES, FeatureSchema
from strategies.agents.params import CryptoModuleParams
from strategies.agents.trained import TrainedCryptoModule
from strategies.features import FeatureSpec

if TYPE_CHECKING:
    from pydantic import BaseModel


CARD = "cm.json"
EAM_WEIGHTS = "weights_eam.pt"
SAM_WEIGHTS = "weights_sam.pt"
TRAIN_LOG = "train_log.jsonl"
CARD_FORMAT = 1


class FeatureSchemaMismatch(ValueError):
    """A stored model does not fit the state the caller builds (names every difference)."""


class ModelNotFound(LookupError):
    """No model folder with that id under the registry root."""


@dataclass(frozen=True)
class ModelSummary:
    """One line of ``cryptorlpm models list``."""

    id: str
    coin: str
    timeframe: str
    seed: int
    created_at: str
    validation_sam: float
    validation_buy_and_hold: float
    path: Path


@dataclass
class LoadedCryptoModule:
    """A trained module ready for inference: networks in eval mode, feature spec, card."""

    id: str
    coin: str
    card: dict[str, Any]
    schema: FeatureSchema
    feature_spec: FeatureSpec | None
    eam: EamQNetwork | None
    sam: SamQNetwork
    path: Path


def config_hash(*sections: BaseModel | None) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of the given config objects."""
    payload = [None if s is None else s.model_dump(mode="json") for s in sections]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model depends on."""
    import pandas

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
    }
    try:
        from importlib.metadata import version

        versions["cryptorlpm"] = version("cryptorlpm")
    except Exception:  # not installed as a package (a bare checkout)
        versions["cryptorlpm"] = "unknown"
    return versions


def runtime() -> dict[str, str]:
    """What an experiment ran on: :func:`library_versions`, the CPU's model and the instruction
    set torch's CPU kernels use. DQN training is not bit-reproducible across CPUs or library
    versions (float rounding differs, and training amplifies it), so results from two runtimes
    are two draws, not a reproduction."""
    return {
        **library_versions(),
        "cpu": cpu_model(),
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }


def save_crypto_module(
    root: Path,
    trained: TrainedCryptoModule,
    *,
    config: BaseModel | None = None,
    training: BaseModel | None = None,
    exchange: str = "",
    symbol: str = "",
    log_file: Path | None = None,
    created_at: datetime | None = None,
) -> Path:
    """Write ``trained`` as ``<root>/<coin>/<id>/`` and return that folder.

    ``config``/``training`` are hashed into ``config_hash`` (and ``training`` stored); the
    JSONL at ``log_file`` is moved into the folder as ``train_log.jsonl``.
    """
    created = (created_at or datetime.now(UTC)).replace(microsecond=0)
    model_id = f"{trained.coin}-{created:%Y%m%dT%H%M%S}-s{trained.seed}"
    folder = Path(root) / trained.coin / model_id
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(root) / trained.coin / f"{model_id}-{suffix}"
    folder.mkdir(parents=True)
    if trained.eam is not None:
        torch.save(trained.eam.state_dict, folder / EAM_WEIGHTS)
    torch.save(trained.sam.state_dict, folder / SAM_WEIGHTS)
    if log_file is not None and Path(log_file).exists():
        shutil.move(str(log_file), folder / TRAIN_LOG)
    card = {
        "format": CARD_FORMAT,
        "id": folder.name,
        "coin": trained.coin,
        "exchange": exchange,
        "symbol": symbol,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": trained.seed,
        "config_hash": config_hash(config, training, trained.params),
        "params": trained.params.model_dump(mode="json"),
        "trading_cost": trained.cost,
        "training": None if training is None else training.model_dump(mode="json"),
        "windows": _dump(getattr(config, "windows", None)),
        "feature_schema": trained.schema.to_dict(),
        "feature_spec": None if trained.feature_spec is None else trained.feature_spec.to_dict(),
        "networks": trained.network_args,
        "data_ranges": {
            name: {"first": ms_to_iso(first), "last": ms_to_iso(last), "ms": [first, last]}
            for name, (first, last) in trained.data_ranges.items()
        },
        "scores": trained.scores,
        "training_run": {
            "seconds": round(trained.seconds, 2),
            "eam": None if trained.eam is None else _agent_run(trained.eam),
            "sam": _agent_run(trained.sam),
        },
        "versions": library_versions(),
    }
    (folder / CARD).write_text(json.dumps(card, indent=1, allow_nan=False), encoding="utf-8")
    return folder


def _dump(section: BaseModel | None) -> dict[str, Any] | None:
    return None if section is None else section.model_dump(mode="json")


def _agent_run(result: Any) -> dict[str, Any]:
    return {
        "env_steps": result.env_steps,
        "updates": result.updates,
        "best_env_steps": result.best_env_steps,
        "best_validation": result.best_validation,
        "seconds": round(result.seconds, 2),
    }


def read_card(folder: Path) -> dict[str, Any]:
    """The ``cm.json`` of a model folder."""
    return json.loads((Path(folder) / CARD).read_text(encoding="utf-8"))


def model_folder(root: Path, model_id: str) -> Path:
    """The folder of ``model_id`` under ``root`` (``<root>/<coin>/<id>``)."""
    for card in sorted(Path(root).glob(f"*/{model_id}/{CARD}")):
        return card.parent
    known = ", ".join(s.id for s in list_models(root)) or "none"
    raise ModelNotFound(f"no model {model_id!r} under {root} (known: {known})")


def list_models(root: Path) -> list[ModelSummary]:
    """Every complete model under ``root`` (folders with a ``cm.json``), by coin then id."""
    summaries = []
    for card_path in sorted(Path(root).glob(f"*/*/{CARD}")):
        card = json.loads(card_path.read_text(encoding="utf-8"))
        validation = card.get("scores", {}).get("validation", {})
        summaries.append(
            ModelSummary(
                id=card["id"],
                coin=card["coin"],
                timeframe=card["feature_schema"]["timeframe"],
                seed=int(card["seed"]),
                created_at=card["created_at"],
                validation_sam=float(validation.get("sam", float("nan"))),
                validation_buy_and_hold=float(validation.get("buy_and_hold", float("nan"))),
                path=card_path.parent,
            )
        )
    return summaries


def show_model(root: Path, model_id: str) -> dict[str, Any]:
    """The model card of ``model_id``, with its folder and files (``cryptorlpm models show``)."""
    folder = model_folder(root, model_id)
    card = read_card(folder)
    card["path"] = str(folder)
    card["files"] = sorted(p.name for p in folder.iterdir())
    return card


def current_schema_errors(schema: FeatureSchema) -> list[str]:
    """Differences between a stored schema and what this code's state builder produces."""
    errors = []
    if schema.version != OBSERVATION_VERSION:
        errors.append(f"version: {schema.version!r} != {OBSERVATION_VERSION!r}")
    if schema.price_features != PRICE_FEATURES:
        errors.append(f"price_features: {list(schema.price_features)} != {list(PRICE_FEATURES)}")
    return errors


def load_crypto_module(folder: Path, expected: FeatureSchema | None = None) -> LoadedCryptoModule:
    """Load a model folder for inference, refusing a feature schema that does not fit.

    The stored schema must match the state this code builds (observation version and price
    features) and, when given, ``expected`` (what the caller will feed: metric features,
    window, timeframe, EAM signal). Raises :class:`FeatureSchemaMismatch` naming each
    difference. Weights are read with ``weights_only=True``.
    """
    folder = Path(folder)
    card = read_card(folder)
    schema = FeatureSchema.from_dict(card["feature_schema"])
    spec = None if card.get("feature_spec") is None else FeatureSpec.from_dict(card["feature_spec"])
    errors = current_schema_errors(schema)
    if expected is not None:
        errors += schema.differences(expected)
    if spec is not None and tuple(spec.feature_names) != schema.metric_features:
        errors.append(
            f"feature_spec names {list(spec.feature_names)} != schema "
            f"{list(schema.metric_features)}"
        )
    if errors:
        raise FeatureSchemaMismatch(
            f"model {card['id']} ({folder}) does not fit the expected feature schema: "
            + "; ".join(errors)
        )
    networks = card["networks"]
    eam = None
    if "eam" in networks:
        eam = EamQNetwork(**networks["eam"])
        eam.load_state_dict(torch.load(folder / EAM_WEIGHTS, weights_only=True))
        eam.eval().requires_grad_(False)
    sam = SamQNetwork(**{**networks["sam"], "channels": tuple(networks["sam"]["channels"])})
    sam.load_state_dict(torch.load(folder / SAM_WEIGHTS, weights_only=True))
    sam.eval().requires_grad_(False)
    return LoadedCryptoModule(
        id=card["id"],
        coin=card["coin"],
        card=card,
        schema=schema,
        feature_spec=spec,
        eam=eam,
        sam=sam,
        path=folder,
    )


def params_of(card: dict[str, Any]) -> CryptoModuleParams:
    """The hyperparameters a model was trained with."""
    return CryptoModuleParams.model_validate(card["params"])
