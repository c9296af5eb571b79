"""``cryptorlpm models history|activate|rollback`` as an operator runs them, on a registry of
really trained (tiny) Crypto Modules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from bot.timeframes import HOUR_MS, to_ms
from strategies import versions
from strategies.agents.train import CoinHistory, Windows, train_cm
from strategies.registry import save_crypto_module
from tests.e2e.test_cli import cryptorlpm, write_config
from tests.unit.agents.conftest import COST, TINY


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two ETH modules (older, newer) trained on a random walk without metric features."""
    root = tmp_path_factory.mktemp("registry") / "models"
    bars = 4 * 200
    open_time = to_ms("2021-01-01") + np.arange(bars, dtype=np.int64) * 6 * HOUR_MS
    close = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, bars)))
    history = CoinHistory(
        coin="ETH",
        timeframe="6h",
        open_time=open_time,
        ohlcv=np.stack([close, close * 1.01, close * 0.99, close, np.ones(bars)], 1),
        features=np.zeros((bars, 0)),
        ready=np.ones(bars, dtype=bool),
        feature_names=(),
    )
    windows = Windows(
        (to_ms("2021-01-01"), to_ms("2021-05-01")), (to_ms("2021-05-01"), to_ms("2021-07-01"))
    )
    ids = []
    for seed, month in ((1, 6), (2, 7)):
        trained = train_cm(history, windows, TINY, seed, cost=COST)
        created = datetime(2021, month, 1, tzinfo=UTC)
        ids.append(save_crypto_module(root, trained, symbol="ETH/USDT", created_at=created).name)
    return root, ids


async def test_activate_history_and_rollback_from_the_command_line(registry, tmp_path: Path):
    root, (older, newer) = registry
    config = write_config(tmp_path / "c.toml", f'[training]\nmodels_dir = "{root}"\n')

    code, out = await cryptorlpm("models", "history", "ETH", "-c", str(config))
    assert code == 0, out
    assert f"no version history yet; the active model is the newest: {newer}" in out

    code, out = await cryptorlpm("models", "activate", older, "-c", str(config))
    assert code == 0, out
    assert f"ETH: active model is now {older} (was {newer})" in out
    assert versions.active_model(root, "ETH") == older
    code, out = await cryptorlpm("models", "list", "-c", str(config))
    assert code == 0 and f"{older} *" in out and f"{newer} *" not in out

    code, out = await cryptorlpm("models", "history", "eth", "-c", str(config))
    assert code == 0, out
    assert "initial" in out and "manual" in out and f"active: {older}" in out
    assert out.index(newer) < out.index(older)  # oldest activation first

    code, out = await cryptorlpm("models", "rollback", "ETH", "-c", str(config))
    assert code == 0, out
    assert f"ETH: rolled back from {older} to {newer}" in out
    assert versions.active_model(root, "ETH") == newer
    assert [a.reason for a in versions.history(root, "ETH")] == ["initial", "manual", "rollback"]

    code, out = await cryptorlpm("models", "rollback", "ETH", "-c", str(config))
    assert code == 2
    assert "error: ETH: no earlier version to roll back to" in out and "Traceback" not in out
    assert versions.active_model(root, "ETH") == newer


async def test_errors_are_one_clear_line(registry, tmp_path: Path) -> None:
    root, _ = registry
    config = write_config(tmp_path / "c.toml", f'[training]\nmodels_dir = "{root}"\n')
    code, out = await cryptorlpm("models", "activate", "ETH-nope", "-c", str(config))
    assert code == 2 and "no model 'ETH-nope'" in out and "Traceback" not in out
    code, out = await cryptorlpm("models", "history", "SOL", "-c", str(config))
    assert code == 2 and "SOL: no models in" in out and "Traceback" not in out
    code, out = await cryptorlpm("models", "rollback", "SOL", "-c", str(config))
    assert code == 2 and "SOL: no earlier version to roll back to" in out
    versions.versions_path(root, "ETH").write_text("{broken")
    try:
        code, out = await cryptorlpm("models", "history", "ETH", "-c", str(config))
        assert code == 2 and "is not valid JSON" in out and "Traceback" not in out
    finally:
        versions.versions_path(root, "ETH").unlink()
