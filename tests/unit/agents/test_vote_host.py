"""The daemon's module host as /modules and /retrain see it: retraining progress and verdict,
previews of /plug and /unplug that change nothing, unknown coins refused in one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.control import ControlError
from config.schema import AppConfig, MarketConfig, TrainingConfig
from strategies.live import VoteHost
from strategies.portfolio import PortfolioVote
from strategies.updating import RetrainOutcome
from tests.unit.agents.test_portfolio import ScriptedModule

NOW = 1_709_251_200_000


class GatedUpdater:
    """Stands in for ModuleUpdater: a retraining that ends when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def due(self, now_ms: int) -> list[str]:
        return []

    async def retrain(self, coin: str, now_ms: int) -> RetrainOutcome:
        await self.release.wait()
        return RetrainOutcome(coin, now_ms, False, "candidate 0.01 < incumbent 0.02", None, None)

    def close(self, wait: bool = True) -> None:
        pass


def host(tmp_path: Path, updater: GatedUpdater | None = None) -> VoteHost:
    cfg = AppConfig(
        market=MarketConfig(coins=("BTC", "ETH"), timeframe="1h"),
        training=TrainingConfig(models_dir=tmp_path / "models"),
    )
    vote = PortfolioVote("USDT", [ScriptedModule("BTC", "btc-1", [])])
    return VoteHost(cfg, vote, None, None, updater)  # type: ignore[arg-type]


async def test_retrain_reports_progress_then_the_gates_verdict(tmp_path: Path) -> None:
    updater = GatedUpdater()
    modules = host(tmp_path, updater)
    answer = modules.request_retrain("BTC", NOW)
    assert answer.startswith("BTC: retraining started") and "verdict is announced" in answer
    (row,) = modules.describe()
    assert row["retraining"] and row["retraining_since"] == NOW and row["last_retrain"] is None
    with pytest.raises(ControlError, match="already retraining"):
        modules.request_retrain("BTC", NOW)
    updater.release.set()
    await modules.retrained()
    lines = await modules.between_cycles(NOW)
    assert lines == ["BTC: retraining rejected: candidate 0.01 < incumbent 0.02"]
    (row,) = modules.describe()
    assert not row["retraining"] and row["retraining_since"] is None
    assert row["last_retrain"] == lines[0]


@pytest.mark.parametrize(
    "ask",
    [
        lambda h: h.request_retrain("DOGE", NOW),
        lambda h: h.preview_plug("DOGE", None),
        lambda h: h.request_plug("DOGE", None, NOW),
    ],
)
def test_an_unknown_coin_is_refused_in_one_line(tmp_path: Path, ask) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ControlError) as refused:
        ask(host(tmp_path, GatedUpdater()))
    message = str(refused.value)
    assert message.startswith("DOGE is not one of the daemon's coins ['BTC', 'ETH']")
    assert "\n" not in message


def test_previews_change_nothing(tmp_path: Path) -> None:
    modules = host(tmp_path)
    assert modules.preview_unplug("BTC") == {"coin": "BTC", "model_id": "btc-1", "remaining": []}
    with pytest.raises(ControlError, match="no module is plugged for ETH"):
        modules.preview_unplug("ETH")
    with pytest.raises(ControlError, match="the registry has no model for ETH"):
        modules.preview_plug("ETH", None)
    with pytest.raises(ControlError, match="no model 'eth-9'"):
        modules.preview_plug("ETH", "eth-9")
    assert modules.vote.coins == ("BTC",)
    assert [r["pending"] for r in modules.describe()] == [None]
