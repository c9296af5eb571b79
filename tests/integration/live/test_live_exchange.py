"""The daemon trading on the fake Binance through ccxt: happy path, faults, guardrails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.live_run import build_policy
from bot.live.daemon import DaemonResult, LiveConfigError, run_daemon, state_path
from bot.store.journal import Journal
from config.schema import AppConfig, Secrets
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import (
    API_KEY,
    API_SECRET,
    T0,
    live_config,
    seed_market,
    step_cycles,
)

COINS = ("BTC", "ETH", "LINK")
ORDER = "/api/v3/order"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    async with FakeBinance(symbols=(), now_ms=T0 - 20_000) as server:
        seed_market(server, COINS)
        server.add_account(API_KEY, API_SECRET, {"USDT": 10_000.0})
        yield server


async def run_cycles(fake: FakeBinance, cfg: AppConfig, cycles: int) -> DaemonResult:
    cfg = cfg.model_copy(update={"live": cfg.live.model_copy(update={"max_cycles": cycles})})
    daemon = asyncio.create_task(
        run_daemon(cfg, fake.secrets(API_KEY), build_policy, install_signals=False)
    )
    stepper = asyncio.create_task(step_cycles(fake, state_path(cfg), cycles))
    done, _ = await asyncio.wait({daemon, stepper}, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()  # raise what failed
    await stepper
    return await asyncio.wait_for(daemon, 10)


def weights(balances: dict[str, float], fake: FakeBinance) -> dict[str, float]:
    prices = {c: fake.price(f"{c}USDT") for c in COINS}
    equity = balances.get("USDT", 0.0) + sum(balances.get(c, 0.0) * prices[c] for c in COINS)
    return {c: balances.get(c, 0.0) * prices[c] / equity for c in COINS}


async def journal_state(cfg: AppConfig) -> tuple[list[dict[str, Any]], list[Any], dict[str, float]]:
    async with await Journal.open(state_path(cfg)) as journal:
        return await journal.cycles(), await journal.orders(), await journal.balances()


async def test_cycles_bring_holdings_to_target_weights_and_state_agrees_with_exchange(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    result = await run_cycles(fake, cfg, 4)
    assert result.cycles == 4
    cycles, orders, balances = await journal_state(cfg)
    assert [c["status"] for c in cycles] == ["done"] * 4
    exchange = fake.balances(API_KEY)
    for asset in ("USDT", *COINS):
        assert balances[asset] == pytest.approx(exchange.get(asset, 0.0), rel=1e-9, abs=1e-9)
    for coin, weight in weights(exchange, fake).items():
        assert weight == pytest.approx(1 / 3, abs=0.005), coin
    sent = [o["clientOrderId"] for o in fake.orders(API_KEY)]
    assert len(sent) == len(set(sent)) == len(orders)
    assert {o.status for o in orders} == {"filled"}


async def test_rate_limits_server_errors_and_timeouts_lose_nothing_and_duplicate_nothing(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    cfg = cfg.model_copy(
        update={"exchange": fake.exchange_config(max_retries=4, retry_base_s=0.05, timeout_ms=400)}
    )
    fake.inject(ORDER, 429, headers={"Retry-After": "1"}, times=1)
    fake.inject(ORDER, 418, headers={"Retry-After": "1"}, times=1, after=1)
    fake.inject(ORDER, 503, times=1, after=2)
    fake.delay(ORDER, 0.6, times=1, after=3)  # answered after the client gave up: processed
    with caplog.at_level(logging.WARNING):
        await run_cycles(fake, cfg, 2)
    cycles, orders, balances = await journal_state(cfg)
    assert [c["status"] for c in cycles] == ["done", "done"]
    sent = [o["clientOrderId"] for o in fake.orders(API_KEY)]
    assert len(sent) == len(set(sent)), "an order was placed twice"
    assert {o.client_order_id for o in orders if o.status == "filled"} == set(sent)
    assert {o.status for o in orders} == {"filled"}, [(o.client_order_id, o.status) for o in orders]
    text = caplog.text
    assert "rate limited by the exchange" in text or "rate limit exceeded" in text
    assert "its fate is unknown" in text
    exchange = fake.balances(API_KEY)
    for asset in ("USDT", *COINS):
        assert balances[asset] == pytest.approx(exchange.get(asset, 0.0), rel=1e-9, abs=1e-9)


async def test_partial_fill_is_booked_and_the_rest_rebalanced_next_cycle(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    fake.partial_fills(0.5, times=1, symbol="ETHUSDT")
    with caplog.at_level(logging.WARNING):
        await run_cycles(fake, cfg, 2)
    _, orders, _ = await journal_state(cfg)
    partial = [o for o in orders if o.status == "expired"]
    assert len(partial) == 1 and partial[0].filled == pytest.approx(partial[0].amount / 2, rel=1e-3)
    assert "expired" in caplog.text
    assert weights(fake.balances(API_KEY), fake)["ETH"] == pytest.approx(1 / 3, abs=0.005)


async def test_exchange_rejections_are_events_not_crashes(
    fake: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False)
    rejected: list[str] = []

    async def tighten(stage: str, info: dict[str, Any]) -> None:
        # After start-up the exchange raises LINK's minimum notional (the daemon sized orders
        # with the old one) and takes most of the cash: a NOTIONAL and a balance rejection.
        if stage == "received" and not rejected:
            fake.state.markets["LINKUSDT"].min_notional = "1000000.00000000"
            fake._accounts[API_KEY].free["USDT"] = fake._accounts[API_KEY].free["USDT"] / 100
        if stage == "rejected":
            rejected.append(info["msg"])

    fake.on_order(tighten)
    with caplog.at_level(logging.WARNING):
        await run_cycles(fake, cfg, 1)
    _, orders, _ = await journal_state(cfg)
    assert any("NOTIONAL" in m for m in rejected)
    assert any("insufficient balance" in m for m in rejected)
    assert {o.status for o in orders} <= {"filled", "rejected"}
    assert "rejected" in caplog.text


async def test_wrong_api_key_stops_with_a_clear_error_and_no_order(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False, max_cycles=1)
    wrong = Secrets(exchange_api_key="not-a-key-0000", exchange_secret=API_SECRET)
    with pytest.raises(Exception, match="API key"):
        await run_daemon(cfg, wrong, build_policy, install_signals=False)
    assert fake.orders() == []


async def test_exchange_mode_without_credentials_is_refused_before_any_request(
    fake: FakeBinance, tmp_path: Path
) -> None:
    cfg = live_config(fake, tmp_path, COINS, paper=False, max_cycles=1)
    with pytest.raises(LiveConfigError, match="CRYPTORLPM_EXCHANGE_API_KEY"):
        await run_daemon(cfg, Secrets(_env_file=None), build_policy, install_signals=False)
    assert fake.requests() == []
