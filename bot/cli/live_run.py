"""The composition root of the daemon: config + secrets + policy + alerts -> ``run_daemon``."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from bot.cli.common import fail
from config import AppConfig, Secrets

log = logging.getLogger(__name__)


async def build_policy(cfg: AppConfig, market: Any, metrics: Any, now_ms: int) -> tuple[Any, Any]:
    """The configured policy (and its module host, for the Crypto Module vote)."""
    coins = cfg.market.coins
    if cfg.live.policy == "equal_weight":
        from strategies.baselines import EqualWeightRebalanced

        return EqualWeightRebalanced(coins), None
    if cfg.live.policy == "hold":
        from strategies.baselines import CashOnly

        return CashOnly(), None
    if cfg.live.policy in ("mars", "mars+manager"):
        from strategies.mars.live import build_mars_live

        return await build_mars_live(cfg, market, metrics, now_ms)
    from strategies.live import build_vote, ready_vote

    vote, host = await build_vote(cfg, market, metrics, now_ms)
    policy = await ready_vote(cfg, vote, metrics, now_ms)
    host.rule = policy
    return policy, host


def policy_inputs(cfg: AppConfig) -> dict[str, tuple[tuple[str, str], ...]]:
    """Coin -> the metric series its module reads (none for a fixed-weight policy), read from
    the model cards before any module is loaded."""
    if cfg.live.policy in ("mars", "mars+manager"):
        from strategies.features import FeatureSpec
        from strategies.live import spec_inputs
        from strategies.mars.artifact import read_card
        from strategies.mars.live import NoEnsemblesError, ensemble_folders

        try:
            folders = ensemble_folders(cfg)
        except NoEnsemblesError:  # refused with its one line when the policy is built
            return {}
        specs = {coin: read_card(folder).get("feature_spec") for coin, folder in folders.items()}
        return {
            coin: spec_inputs(None if spec is None else FeatureSpec.from_dict(spec))
            for coin, spec in specs.items()
        }
    if cfg.live.policy != "vote":
        return {}
    from strategies.live import folder_inputs

    return folder_inputs(cfg)


def alerts_factory(cfg: AppConfig, secrets: Secrets) -> Any:
    """Telegram alerts and commands when enabled (None otherwise)."""
    if not cfg.telegram.enabled:
        return None

    if secrets.telegram_token is None or not secrets.telegram_token.get_secret_value():
        log.warning("[telegram] is enabled but CRYPTORLPM_TELEGRAM_TOKEN is not set: no alerts")
        return None
    if not cfg.telegram.chat_ids:
        log.warning("[telegram].chat_ids is empty: alerts have no recipient, commands are refused")

    async def make(controls: Any) -> list[Any]:
        from bot.telegram import TelegramAlerts, TelegramChats, TelegramCommands
        from bot.telegram.chats import MIGRATIONS_KEY

        journal = controls.journal  # migrated chat ids are kept in state.db across restarts

        async def remember(migrations: dict[int, int]) -> None:
            await journal.put(MIGRATIONS_KEY, {str(k): v for k, v in migrations.items()})

        known = await journal.get(MIGRATIONS_KEY, {}) or {}
        chats = TelegramChats(cfg.telegram.chat_ids, migrated=known, on_migrated=remember)
        token = secrets.telegram_token
        alerts = TelegramAlerts(
            cfg.telegram,
            token,
            quote=cfg.market.quote,
            chats=chats,
            inputs=getattr(controls, "freshness_lines", None),
        )
        # The /plug, /unplug and /stop confirmation windows run on the daemon's (exchange) clock.
        commands = TelegramCommands(
            cfg.telegram, token, controls, chats=chats, clock=lambda: controls.now_ms() / 1000
        )
        return [alerts, commands]

    return make


def run_live(cfg: AppConfig, *, json_logs: bool = False, verbose: bool = False) -> None:
    """Run the daemon in the foreground; errors become one-line messages."""
    import ccxt

    from bot.control import ControlError
    from bot.feed.dataset import DatasetConfigError
    from bot.feed.exchange import ExchangeConfigError, describe_error
    from bot.live.daemon import LiveConfigError, run_daemon
    from bot.live.executor import LiveTradingError
    from bot.logs import redact_secrets, setup_logging

    if cfg.live.policy == "vote":  # before connecting: refuse a vote with nothing to vote
        from strategies.live import NoModulesError, module_folders

        try:
            module_folders(cfg)
        except (NoModulesError, ControlError) as exc:
            fail(str(exc))
    if cfg.live.policy in ("mars", "mars+manager"):  # every coin needs its ensemble
        from strategies.mars.live import NoEnsemblesError, ensemble_folders

        try:
            ensemble_folders(cfg)
        except NoEnsemblesError as exc:
            fail(str(exc))
    secrets = Secrets()
    if json_logs:
        setup_logging(verbose, json_lines=True)
    redact_secrets(
        [
            s.get_secret_value()
            for s in (
                secrets.exchange_api_key,
                secrets.exchange_secret,
                secrets.telegram_token,
                secrets.santiment_api_key,
            )
            if s is not None
        ]
        + [os.environ.get(cfg.dashboard.token_env, "")]  # the dashboard's token, if any
    )
    try:
        result = asyncio.run(
            run_daemon(
                cfg,
                secrets,
                build_policy,
                alerts_factory=alerts_factory(cfg, secrets),
                inputs=policy_inputs,
            )
        )
    except (LiveConfigError, LiveTradingError, ExchangeConfigError, DatasetConfigError) as exc:
        fail(str(exc))
        return
    except ccxt.BaseError as exc:  # an exchange error nothing above could act on
        fail(f"{cfg.exchange.id}: {describe_error(exc)}; the daemon stopped")
        return
    log.info(
        "daemon stopped: %s after %d cycles, equity %.2f",
        result.reason,
        result.cycles,
        result.equity,
    )
