"""Load an :class:`AppConfig` from TOML plus environment overrides, with readable errors.

Environment overrides use ``CRYPTORLPM__SECTION__KEY=value`` (double underscores separate the
levels), for example ``CRYPTORLPM__MARKET__TIMEFRAME=4h``. A value that parses as JSON (a list, a
number, ``true``) is taken as that JSON value, otherwise as a string. Command-line options that
set a config key go through :func:`apply_overrides`, so they are validated like the file.

Every error names where the bad value came from: the file and the dotted key, the environment
variable, or the command-line option; one problem makes one line.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config.schema import AppConfig

ENV_PREFIX = "CRYPTORLPM__"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key, value and expectation."""


def default_config_path() -> Path:
    """The bundled ``config/demo.toml`` (the synthetic market), the default of every command."""
    return bundled_config_path("demo.toml")


def bundled_config_path(name: str) -> Path:
    """A config file shipped in the ``config`` package (``demo.toml``, ``paper.toml``, ...)."""
    return Path(str(resources.files("config") / name))


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read ``path`` (default: the bundled demo config), apply env overrides and validate.

    Raises :class:`ConfigError` with one message listing every bad key, its value and what
    was expected.
    """
    path = Path(path) if path is not None else default_config_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; expected a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the config as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    origins = _apply_env_overrides(raw, os.environ if env is None else env)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, origins)) from None


def apply_overrides(
    cfg: AppConfig, values: Mapping[str, Any], origins: Mapping[str, str]
) -> AppConfig:
    """``cfg`` with ``values`` (dotted key -> value, e.g. ``{"live.max_cycles": 0}``) set and
    validated as the file is; ``origins`` names each key's source in errors (``--max-cycles``).

    Raises :class:`ConfigError` naming the option, its value and the rule it breaks.
    """
    raw = cfg.model_dump()
    for dotted, value in values.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error("", exc, origins)) from None


def format_validation_error(
    source: str | Path, exc: ValidationError, origins: Mapping[str, str] | None = None
) -> str:
    """One message naming, for each problem, where the value came from (the dotted key of
    ``source``, or the environment variable / option that ``origins`` maps its key to), the
    value given and the rule. One problem is one line; several are listed one per line."""
    origins = origins or {}
    lines = []
    from_file = False
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<top level>"
        expected = error["msg"].removeprefix("Value error, ")
        origin = _origin(key, origins)
        from_file = from_file or origin is None
        where = key if origin is None else f"{origin} ({key})"
        if error["type"] == "extra_forbidden":
            # Never echo the value of an unknown key: it may be a secret put in the wrong place.
            hint = SECRETS_HINT if _looks_secret(key) else "check its spelling"
            lines.append(f"{where}: unknown key ({hint})")
        elif error["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            shown = "<redacted>" if _looks_secret(key) else repr(error["input"])
            lines.append(f"{where} = {shown}: {expected}")
    head = f"invalid config {source}" if from_file and source else "invalid setting"
    if len(lines) == 1:
        return f"{head}: {lines[0]}"
    return f"{head}:\n  " + "\n  ".join(lines)


def _origin(key: str, origins: Mapping[str, str]) -> str | None:
    """The variable or option that set ``key`` (or a section above it), if any."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        origin = origins.get(".".join(parts[:n]))
        if origin is not None:
            return origin
    return None


SECRETS_HINT = (
    "secrets are read from the environment only: CRYPTORLPM_EXCHANGE_API_KEY, "
    "CRYPTORLPM_EXCHANGE_SECRET, CRYPTORLPM_TELEGRAM_TOKEN, CRYPTORLPM_SANTIMENT_API_KEY"
)
_SECRET_WORDS = ("key", "secret", "token", "password", "passphrase")


def _looks_secret(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return any(word in last for word in _SECRET_WORDS)


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Set every ``CRYPTORLPM__...`` variable's value into ``raw``; returns dotted key ->
    ``"environment NAME"`` for error messages."""
    origins: dict[str, str] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not keys:
            continue
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"environment {name}: {'.'.join(keys[: keys.index(key) + 1])} is a value, "
                    "not a section"
                )
            node = child
        node[keys[-1]] = _parse_env_value(text)
        origins[".".join(keys)] = f"environment {name}"
    return origins


def _parse_env_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
