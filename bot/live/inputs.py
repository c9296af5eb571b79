"""What the daemon's decisions rest on: every coin's last bar and every metric it reads.

:class:`InputsReport` gathers, after every cycle and every metric refresh, each coin's newest
bar (its close, and whether the websocket or REST delivered it), the newest value of every
metric series its module reads (day, when it became known, who stored it, what a refresh could
not do), which modules are not ready and why, the state of the kline websocket and Santiment's
delay. It keeps that in ``state.db`` (key ``inputs``) for ``cryptorlpm live status``, answers
``/status`` and the daily summary through :func:`freshness_lines`, and tells the alert services
once when a module stops or starts being ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bot.feed.santiment import SantimentSource
from bot.feed.santiment_live import MetricRefresher
from bot.live.driver import LiveDriver
from bot.live.status import INPUTS_KEY
from bot.store import MetricStore
from bot.store.journal import Journal
from bot.timeframes import ms_to_iso
from config.schema import AppConfig, Secrets

log = logging.getLogger(__name__)

KEY = INPUTS_KEY
"""The ``state.db`` key of the report."""

Inputs = Mapping[str, Sequence[tuple[str, str]]]


def metric_refresher(
    cfg: AppConfig, secrets: Secrets, metrics: MetricStore, driver: LiveDriver, inputs: Inputs
) -> MetricRefresher | None:
    """The daemon's Santiment refresher for ``inputs`` (coin -> series its module reads), or
    None when no module reads a metric."""
    if not any(inputs.values()):
        return None
    key = secrets.santiment_api_key
    has_key = key is not None and bool(key.get_secret_value())
    source = SantimentSource(cfg.santiment, key if has_key else None, now_ms=driver.clock.now_ms)
    refresher = MetricRefresher(
        cfg, source, metrics, driver.gate, driver.clock.now_ms, has_api_key=has_key
    )
    refresher.inputs = lambda: inputs
    return refresher


class InputsReport:
    """Keeps the inputs' freshness in ``state.db`` and announces readiness changes."""

    def __init__(
        self,
        cfg: AppConfig,
        driver: LiveDriver,
        journal: Journal,
        refresher: MetricRefresher | None,
        *,
        inputs: Callable[[], Inputs],
        not_ready: Callable[[], Mapping[str, str]],
        announce: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.journal = journal
        self.refresher = refresher
        self.inputs = inputs
        self.not_ready = not_ready
        self.announce = announce
        self.snapshot: dict[str, Any] = {}
        self._told: dict[str, str] = {}

    async def after_cycle(self, ts: int) -> None:
        """After the cycle deciding at ``ts``: record, announce changes, start a metric
        refresh when one is due (it runs in the background)."""
        await self.record()
        self._announce_changes()
        if self.refresher is not None:
            self.refresher.kick(self.driver.clock.now_ms())

    async def record(self) -> dict[str, Any]:
        """Build the report and keep it in ``state.db``; returns it."""
        self.snapshot = self.build()
        await self.journal.put(KEY, self.snapshot)
        return self.snapshot

    def build(self) -> dict[str, Any]:
        """The report now (JSON-ready)."""
        cfg = self.cfg
        inputs = self.inputs()
        not_ready = self.not_ready()
        series = self.refresher.freshness() if self.refresher is not None else {}
        coins: dict[str, Any] = {}
        for coin in cfg.market.coins:
            symbol = cfg.market.symbol(coin)
            close, source = self.driver.last_bars.get(symbol, (None, None))
            metrics = []
            for asset, name in inputs.get(coin, ()):
                state = series.get((asset, name))
                metrics.append(
                    state.to_dict()
                    if state is not None
                    else {"metric": f"{asset}:{name}", "problem": "not refreshed yet"}
                )
            coins[coin] = {
                "bar": None if close is None else {"close": ms_to_iso(close), "source": source},
                "metrics": metrics,
                "not_ready": not_ready.get(coin),
            }
        stream = self.driver.stream
        health = stream.health() if stream is not None else None
        now = self.driver.clock.now_ms()
        return {
            "at": ms_to_iso(now),
            "bar_source": "websocket" if stream is not None else "REST",
            "stream": None
            if health is None
            else {
                "connected": self.driver.streaming,
                "connections": health.connections,
                "drops": health.drops,
                "stalls": health.stalls,
            },
            "santiment": None if self.refresher is None else self.refresher.plan_note(now),
            "metric_refreshes": 0 if self.refresher is None else self.refresher.refreshes,
            "not_ready_rule": cfg.live.not_ready,
            "coins": coins,
        }

    def lines(self) -> list[str]:
        """The report as lines (``/status``, the daily summary)."""
        return freshness_lines(self.snapshot)

    def _announce_changes(self) -> None:
        now = {coin: info["not_ready"] for coin, info in self.snapshot.get("coins", {}).items()}
        rule = _rule_text(self.cfg.live.not_ready)
        for coin, reason in now.items():
            if reason and coin not in self._told:
                self._told[coin] = reason
                self.announce(f"{coin} not ready: {reason}; {rule}")
            elif not reason and coin in self._told:
                del self._told[coin]
                self.announce(f"{coin} ready again: its inputs are recent")


def _rule_text(rule: str) -> str:
    return "its vote counts as cash" if rule == "cash" else "its vote holds its last weight"


def not_ready_lines(snapshot: Mapping[str, Any] | None) -> list[str]:
    """One line per module that is not ready: ``BTC not ready: metric X has no value since D;
    its vote counts as cash``."""
    if not snapshot:
        return []
    rule = _rule_text(str(snapshot.get("not_ready_rule", "cash")))
    return [
        f"{coin} not ready: {info['not_ready']}; {rule}"
        for coin, info in (snapshot.get("coins") or {}).items()
        if info.get("not_ready")
    ]


def freshness_lines(snapshot: Mapping[str, Any] | None) -> list[str]:
    """Every coin's inputs, one line each (last bar and source, each metric's last day and
    source or problem), then the stream's and Santiment's state."""
    if not snapshot:
        return []
    lines = []
    for coin, info in (snapshot.get("coins") or {}).items():
        bar = info.get("bar")
        parts = [
            f"bar {bar['close'][:16].replace('T', ' ')} ({bar['source']})" if bar else "no bar yet"
        ]
        for metric in info.get("metrics") or ():
            day = metric.get("last_day")
            text = f"{metric['metric']} {day or 'no value'}"
            if metric.get("source"):
                text += f" ({metric['source']})"
            if metric.get("problem"):
                text += f" [{metric['problem']}]"
            parts.append(text)
        lines.append(f"{coin}: " + "; ".join(parts))
    stream = snapshot.get("stream")
    if stream is not None:
        lines.append(
            f"kline websocket: {'connected' if stream['connected'] else 'DOWN (REST stands in)'}, "
            f"{stream['drops']} drop(s), {stream['stalls']} stall(s)"
        )
    elif snapshot.get("bar_source"):
        lines.append(f"bars: {snapshot['bar_source']}")
    if snapshot.get("santiment"):
        lines.append(str(snapshot["santiment"]))
    return lines
