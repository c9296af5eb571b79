"""Typed configuration: frozen pydantic models loaded from TOML with environment overrides.

``config`` imports nothing else of the project; everything else imports it.
"""

from config.loader import (
    ConfigError,
    apply_overrides,
    bundled_config_path,
    default_config_path,
    load_config,
)
from config.schema import AppConfig, Secrets

__all__ = [
    "AppConfig",
    "ConfigError",
    "Secrets",
    "apply_overrides",
    "bundled_config_path",
    "default_config_path",
    "load_config",
]
