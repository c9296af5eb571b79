"""Telegram: alerts to the operator and commands from the operator, over the Bot API.

Telegram is one client of the control service (:mod:`bot.control`): :class:`TelegramCommands`
turns chat commands into :class:`~bot.control.Controls` calls, :class:`TelegramAlerts` turns bus
events into messages through a bounded, rate-limited queue that trading never waits on.

Wiring in the daemon::

    alerts = TelegramAlerts(config.telegram, secrets.telegram_token, quote=config.market.quote)
    alerts.attach(bus)
    await alerts.start()
    commands = TelegramCommands(config.telegram, secrets.telegram_token, controls)
    await commands.start()
    alerts.started("paper, BTC ETH, 15m")
    ...
    await commands.close()
    alerts.stopped("stopped by /stop")
    await alerts.close(flush_timeout_s=5.0)
"""

from bot.telegram.alerts import AlertStats, TelegramAlerts
from bot.telegram.chats import TelegramChats
from bot.telegram.commands import TelegramCommands
from bot.telegram.transport import BotClient, TokenRedactor

__all__ = [
    "AlertStats",
    "BotClient",
    "TelegramAlerts",
    "TelegramChats",
    "TelegramCommands",
    "TokenRedactor",
]
