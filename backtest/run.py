"""One backtest: a policy, the engine, the simulated broker and a replay, recorded."""

from __future__ import annotations

from backtest.broker import SimBroker
from backtest.recorder import Recorder
from backtest.replay import Progress, ReplayDriver
from backtest.result import RunResult
from bot.engine import Policy, TradingEngine
from bot.engine.kernel import market_rules
from config.schema import AppConfig


async def run_backtest(
    cfg: AppConfig,
    policy: Policy,
    driver: ReplayDriver,
    *,
    name: str,
    progress: Progress | None = None,
) -> RunResult:
    """Replay ``driver`` through a fresh engine deciding with ``policy``; return the record."""
    rules = market_rules(cfg)
    broker = SimBroker(cfg.broker, cfg.market.quote, rules, driver.next_open)
    engine = TradingEngine(cfg, policy, broker, rules=rules)
    recorder = Recorder()
    recorder.attach(engine.bus)
    await driver.run(engine.bus, progress)
    return recorder.result(
        name,
        timeframe=driver.timeframe,
        quote=cfg.market.quote,
        initial_cash=cfg.broker.initial_cash,
        fees_paid=engine.account.fees_paid,
    )
