"""Which model of a coin is active, how it got there, and when the coin was last retrained.

Inside the registry, next to the model folders, each coin has ``<root>/<coin>/versions.json``::

    {"format": 1, "coin": "ETH", "active": "ETH-20240301T000000-s1",
     "history": [{"model_id": ..., "activated_at": "2024-03-01T00:00:00Z",
                  "activated_at_ms": ..., "reason": "initial" | "retrain" | "rollback" | "manual",
                  "validation_score": ..., "incumbent_score": ...}, ...],
     "last_retrain_ms": ..., "retrains": [{"at_ms": ..., "at": ..., "outcome": {...}}, ...]}

``history`` is the ordered list of activations (oldest first); its last entry is the active
model. ``retrains`` is the schedule state of the Agent Updating Unit (every retraining attempt,
accepted, rejected or failed), so that a restarted daemon does not retrain again.

A coin without ``versions.json`` uses its newest model (by creation time, then id), as before
versions existed. The first write of a coin's history records that implicit model as its
``initial`` activation, so that a candidate saved later does not silently become "the newest"
and a rollback can always return to what was running.

Rollback works like undo: :func:`rollback` re-activates the model that was active before the
current one; a second rollback goes one step further back. Every write is atomic (temp file,
fsync, ``os.replace``) under an advisory lock, so a daemon and a CLI command can both write
without ever leaving a torn file. Times are always passed in (the daemon's clock); this module
never reads the wall clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from bot.timeframes import ms_to_iso

CARD = "cm.json"
"""The model card of a registry folder (:data:`strategies.registry.CARD`; repeated here so that
this module, and the CLI commands using it, load without torch)."""
VERSIONS = "versions.json"
LOCK = ".versions.lock"
FORMAT = 1
KEEP_RETRAINS = 100
"""Retraining records kept per coin (the newest ones)."""

Reason = Literal["initial", "retrain", "rollback", "manual"]
REASONS: tuple[str, ...] = ("initial", "retrain", "rollback", "manual")


class VersionError(LookupError):
    """A version operation that cannot be done (unreadable file, nothing to roll back to)."""


class UnknownModel(VersionError):
    """The model id is not a folder of that coin in the registry (or was deleted)."""


@dataclass(frozen=True)
class Activation:
    """One entry of a coin's version history: a model became the active one."""

    model_id: str
    activated_at: str
    """ISO-8601 UTC time of the activation (on the clock of whoever activated it)."""
    activated_at_ms: int
    reason: str
    """``initial``, ``retrain`` (accepted by the validation gate), ``rollback`` or ``manual``."""
    validation_score: float | None = None
    """The model's score on the validation window it was accepted on (retrains)."""
    incumbent_score: float | None = None
    """The replaced model's score on the same window (retrains)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Activation:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model_id=str(data["model_id"]),
            activated_at=str(data["activated_at"]),
            activated_at_ms=int(data["activated_at_ms"]),
            reason=str(data["reason"]),
            validation_score=_float_or_none(data.get("validation_score")),
            incumbent_score=_float_or_none(data.get("incumbent_score")),
        )


@dataclass(frozen=True)
class RetrainRecord:
    """One retraining attempt of a coin and what came of it."""

    at_ms: int
    at: str
    outcome: dict[str, Any]


# --- reading ------------------------------------------------------------------------------------


def versions_path(root: Path, coin: str) -> Path:
    """``<root>/<coin>/versions.json``."""
    return Path(root) / coin / VERSIONS


def history(root: Path, coin: str) -> list[Activation]:
    """Every activation of ``coin``'s models, oldest first (empty without ``versions.json``)."""
    return [Activation.from_dict(a) for a in _read(root, coin)["history"]]


def active_model(root: Path, coin: str) -> str | None:
    """The id of ``coin``'s active model: the last activation, else its newest model, else None."""
    entries = _read(root, coin)["history"]
    if entries:
        return str(entries[-1]["model_id"])
    return newest_model(root, coin)


def active_folder(root: Path, coin: str) -> Path | None:
    """The registry folder of ``coin``'s active model (None when the coin has no model)."""
    model_id = active_model(root, coin)
    if model_id is None:
        return None
    folder = Path(root) / coin / model_id
    if not (folder / CARD).exists():
        raise UnknownModel(
            f"{coin}'s active model {model_id} has no folder under {Path(root) / coin} "
            "(deleted?); activate another one: cryptorlpm models activate MODEL_ID"
        )
    return folder


def newest_model(root: Path, coin: str) -> str | None:
    """``coin``'s most recently created model (ties broken by id), or None."""
    cards = []
    for path in Path(root, coin).glob(f"*/{CARD}"):
        card = json.loads(path.read_text(encoding="utf-8"))
        cards.append((str(card.get("created_at", "")), path.parent.name))
    return max(cards)[1] if cards else None


def coin_of(root: Path, model_id: str) -> str:
    """The coin of a model id in the registry (raises :class:`UnknownModel`)."""
    for path in sorted(Path(root).glob(f"*/{model_id}/{CARD}")):
        return str(_card(path.parent)["coin"])
    known = sorted(p.parent.name for p in Path(root).glob(f"*/*/{CARD}"))
    raise UnknownModel(f"no model {model_id!r} under {root} (known: {', '.join(known) or 'none'})")


def last_retrain_ms(root: Path, coin: str) -> int | None:
    """When ``coin`` was last retrained (epoch ms on the daemon's clock), or None."""
    value = _read(root, coin).get("last_retrain_ms")
    return None if value is None else int(value)


def retrains(root: Path, coin: str) -> list[RetrainRecord]:
    """The recorded retraining attempts of ``coin``, oldest first (the newest few are kept)."""
    return [
        RetrainRecord(int(r["at_ms"]), str(r["at"]), dict(r["outcome"]))
        for r in _read(root, coin).get("retrains", [])
    ]


# --- writing ------------------------------------------------------------------------------------


def activate(
    root: Path,
    coin: str,
    model_id: str,
    *,
    reason: Reason,
    at_ms: int,
    validation_score: float | None = None,
    incumbent_score: float | None = None,
) -> Activation:
    """Make ``model_id`` the active model of ``coin`` and record why; returns the activation.

    The model must be a folder of ``coin`` in the registry. Activating the model that is
    already active changes nothing and returns its last activation.
    """
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {list(REASONS)}, got {reason!r}")
    _check_model(root, coin, model_id)
    with _locked(root, coin) as state:
        entries = state["history"]
        if entries and entries[-1]["model_id"] == model_id:
            return Activation.from_dict(entries[-1])
        _pin_implicit(root, coin, state, at_ms, unless=model_id)
        entry = Activation(
            model_id=model_id,
            activated_at=ms_to_iso(at_ms),
            activated_at_ms=int(at_ms),
            reason=reason,
            validation_score=_float_or_none(validation_score),
            incumbent_score=_float_or_none(incumbent_score),
        )
        entries.append(entry.to_dict())
        return entry


def pin_active(root: Path, coin: str, at_ms: int) -> str | None:
    """Record ``coin``'s implicit active model (its newest) as its ``initial`` activation when it
    has no history yet; returns the active id. Call it before saving a candidate into the
    registry, so that the candidate does not become "the newest" and thereby active."""
    with _locked(root, coin) as state:
        _pin_implicit(root, coin, state, at_ms)
        return str(state["history"][-1]["model_id"]) if state["history"] else None


def rollback(root: Path, coin: str, at_ms: int) -> str:
    """Re-activate the model that was active before the current one; returns its id.

    Like undo: rolling back twice goes two versions back. Raises :class:`VersionError` when
    there is no earlier version, :class:`UnknownModel` when its folder was deleted.
    """
    with _locked(root, coin) as state:
        stack = _undo_stack(state["history"])
        if len(stack) < 2:
            current = stack[-1] if stack else newest_model(root, coin)
            raise VersionError(
                f"{coin}: no earlier version to roll back to (active: {current or 'none'}; "
                f"history: {len(state['history'])} activation(s))"
            )
        target = stack[-2]
        _check_model(root, coin, target)
        state["history"].append(
            Activation(target, ms_to_iso(at_ms), int(at_ms), "rollback").to_dict()
        )
    return target


def record_retrain(root: Path, coin: str, at_ms: int, outcome: Mapping[str, Any]) -> None:
    """Remember that ``coin`` was retrained at ``at_ms`` (whatever came of it) and the outcome
    (JSON-ready: ids, scores, the gate's reason, an error)."""
    with _locked(root, coin) as state:
        last = state.get("last_retrain_ms")
        state["last_retrain_ms"] = int(at_ms) if last is None else max(int(last), int(at_ms))
        records = state.setdefault("retrains", [])
        records.append({"at_ms": int(at_ms), "at": ms_to_iso(at_ms), "outcome": _json(outcome)})
        del records[:-KEEP_RETRAINS]


# --- internals ----------------------------------------------------------------------------------


def _empty(coin: str) -> dict[str, Any]:
    return {"format": FORMAT, "coin": coin, "active": None, "history": [], "retrains": []}


def _read(root: Path, coin: str) -> dict[str, Any]:
    path = versions_path(root, coin)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _empty(coin)
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VersionError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(state, dict) or not isinstance(state.get("history"), list):
        raise VersionError(f"{path} has no 'history' list; fix or remove it")
    if state.get("format", FORMAT) > FORMAT:
        raise VersionError(f"{path} has format {state['format']}, newer than this code's {FORMAT}")
    state.setdefault("retrains", [])
    return state


@contextlib.contextmanager
def _locked(root: Path, coin: str) -> Iterator[dict[str, Any]]:
    """Read-modify-write of a coin's versions under an exclusive lock; written atomically."""
    folder = Path(root) / coin
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = _read(root, coin)
            before = json.dumps(state, sort_keys=True)
            yield state
            state["active"] = state["history"][-1]["model_id"] if state["history"] else None
            if json.dumps(state, sort_keys=True) != before:
                _write_atomic(versions_path(root, coin), state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _pin_implicit(
    root: Path, coin: str, state: dict[str, Any], at_ms: int, unless: str | None = None
) -> None:
    if state["history"]:
        return
    implicit = newest_model(root, coin)
    if implicit is not None and implicit != unless:
        state["history"].append(
            Activation(implicit, ms_to_iso(at_ms), int(at_ms), "initial").to_dict()
        )


def _undo_stack(entries: list[dict[str, Any]]) -> list[str]:
    """The chain of versions a rollback walks back through: activations push, rollbacks pop."""
    stack: list[str] = []
    for entry in entries:
        model_id = str(entry["model_id"])
        if entry["reason"] == "rollback" and len(stack) >= 2 and stack[-2] == model_id:
            stack.pop()
        elif not stack or stack[-1] != model_id:
            stack.append(model_id)
    return stack


def _check_model(root: Path, coin: str, model_id: str) -> None:
    folder = Path(root) / coin / model_id
    if not (folder / CARD).exists():
        known = sorted(p.parent.name for p in Path(root, coin).glob(f"*/{CARD}"))
        raise UnknownModel(
            f"no model {model_id!r} of {coin} under {Path(root) / coin} "
            f"(known: {', '.join(known) or 'none'})"
        )
    card_coin = _card(folder).get("coin")
    if card_coin != coin:
        raise UnknownModel(f"model {model_id!r} is a {card_coin} model, not {coin}")


def _card(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CARD).read_text(encoding="utf-8"))


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def _json(value: Any) -> Any:
    """``value`` with non-finite floats as None, paths and datetimes as text (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, float):
        return _float_or_none(value)
    if isinstance(value, Path | datetime):
        return str(value)
    return value
