"""The Crypto Modules inside the live daemon: build the vote, plug, unplug, hot-swap, retrain.

:func:`build_vote` loads each configured coin's module (``[live].models``, else the registry's
active version), warms it up on the stored history and plugs it into a
:class:`~strategies.portfolio.PortfolioVote`. :class:`VoteHost` is the daemon's
``ModuleHost``: operator requests (``plug``, ``unplug``, ``rollback``, ``retrain``) and accepted
retrainings never touch the vote while a cycle runs. A module to swap in is loaded and warmed up
in a worker thread; :meth:`VoteHost.between_cycles`, which the daemon calls before each cycle,
feeds it the few bars stored since its warm-up ended and then replaces, plugs or unplugs in one
step. Unplugging renormalises the vote (``m`` shrinks) and the next rebalance sells the coin.

When a swap lands: at the first cycle that starts after its module is loaded and warmed up
(:meth:`VoteHost.prepared` says when). A cycle that starts while a preparation still runs waits
for it at most ``min(10 s, a quarter of a bar)``, then trades with the old module and the swap
lands at the next cycle: a slow disk, a long ``warmup_days`` or a loaded machine delays the
swap by a cycle, never the trading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.control import ControlError
from bot.events import Event, Metric
from bot.store import MarketStore, MetricStore
from bot.timeframes import timeframe_ms
from config.schema import AppConfig
from strategies import versions
from strategies.crypto_module import CryptoModule
from strategies.portfolio import PortfolioVote
from strategies.registry import ModelNotFound, model_folder, read_card

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass
class _Pending:
    """A module being prepared for the vote (or an unplug) and why."""

    coin: str
    action: str  # plug | replace | unplug
    reason: str
    model_id: str | None = None
    task: asyncio.Task[tuple[CryptoModule, int]] | None = None
    warmed_until: int = 0
    """The last stored close the module was warmed up to (set by the preparing task)."""


async def history_events(
    cfg: AppConfig,
    market: MarketStore,
    metrics: MetricStore,
    coin: str,
    since_ms: int,
    until_ms: int,
) -> list[Event]:
    """``coin``'s stored bars closing in ``(since, until]`` and the metrics known by then, in
    publish order (metrics first at equal times), for a module's warm-up."""
    symbol = cfg.market.symbol(coin)
    tf = cfg.market.timeframe
    step = _step(cfg)
    bars = [
        b
        async for b in market.iter_bars(
            cfg.market.exchange, [symbol], tf, start=since_ms - step + 1, end=until_ms - step + 1
        )
    ]
    assets = [coin, *cfg.metrics.market_wide_assets]
    found: list[Metric] = [
        m async for m in metrics.iter_metrics(assets, start=since_ms + 1, end=until_ms + 1)
    ]
    events: list[Event] = [*found, *bars]
    events.sort(key=lambda e: (e.ts, 0 if isinstance(e, Metric) else 1))
    return events


def _step(cfg: AppConfig) -> int:
    return timeframe_ms(cfg.market.timeframe)


def resolve_folder(cfg: AppConfig, coin: str, model_id: str | None = None) -> Path | None:
    """The folder of ``model_id``, else ``[live].models[coin]``, else the active version."""
    root = cfg.training.models_dir
    wanted = model_id or cfg.live.models.get(coin)
    if wanted:
        try:
            return model_folder(root, wanted)
        except ModelNotFound as exc:
            raise ControlError(str(exc)) from None
    return versions.active_folder(root, coin)


class NoModulesError(LookupError):
    """``[live].policy = "vote"`` but the registry has no module for any configured coin."""


def module_folders(cfg: AppConfig) -> dict[str, Path]:
    """Each configured coin's module folder (``[live].models``, else the active version),
    leaving out coins without one.

    Raises :class:`NoModulesError` when no coin has one (a vote over nothing would keep the
    whole portfolio in cash while looking like a trading bot), naming the registry and the two
    policies that need no module; :class:`~bot.control.ControlError` when ``[live].models``
    names a model the registry lacks or a coin's active version is broken.
    """
    folders: dict[str, Path] = {}
    for coin in cfg.market.coins:
        try:
            folder = resolve_folder(cfg, coin)
        except versions.VersionError as exc:
            raise ControlError(str(exc)) from None
        if folder is not None:
            folders[coin] = folder
    if not folders:
        coins = cfg.market.coins
        raise NoModulesError(
            f'[live].policy = "vote" trades the coins\' Crypto Modules, and '
            f"{cfg.training.models_dir} ([training].models_dir) has none for "
            f"{', '.join(coins)}: train them first (cryptorlpm train --coin {coins[0]} -c "
            'CONFIG), or set [live].policy = "hold" (cash only) or "equal_weight" (1/N, '
            "rebalanced) to run without modules"
        )
    return folders


def load_module(cfg: AppConfig, folder: Path, events: Iterable[Event]) -> tuple[CryptoModule, int]:
    """Load a registry folder (``<root>/<coin>/<id>``) as a handler and warm it up; returns it
    and the bars it read. A fresh module reads the whole history at once (features, states and
    network passes batched; :meth:`CryptoModule.warm_up`), ending in the state reading it bar
    by bar leaves, with torch on one thread in the loading thread."""
    module = CryptoModule.load(folder, cfg.market.symbol(folder.parent.name))
    if module.timeframe != cfg.market.timeframe:
        raise ControlError(
            f"model {module.model_id} trades {module.timeframe} bars; the daemon trades "
            f"{cfg.market.timeframe} ([market].timeframe)"
        )
    bars = module.warm_up(events)
    return module, bars


class VoteHost:
    """The daemon's Crypto Modules: the vote plus pending swaps and retrainings."""

    def __init__(
        self,
        cfg: AppConfig,
        vote: PortfolioVote,
        market: MarketStore,
        metrics: MetricStore,
        updater: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.vote = vote
        self.market = market
        self.metrics = metrics
        self.updater = updater
        self._pending: dict[str, _Pending] = {}
        self._retraining: dict[str, asyncio.Task[Any]] = {}
        self._retraining_since: dict[str, int] = {}
        self.last_retrain: dict[str, str] = {}
        """The last retraining's verdict per coin (the line the operator was sent)."""

    # -- requests (from the control service) ---------------------------------------------------

    def _check_coin(self, coin: str) -> None:
        if coin not in self.cfg.market.coins:
            raise ControlError(
                f"{coin} is not one of the daemon's coins {list(self.cfg.market.coins)} "
                "([market].coins: the daemon fetches bars for those only)"
            )

    def preview_plug(self, coin: str, model_id: str | None) -> dict[str, Any]:
        """What :meth:`request_plug` would do, changing nothing: ``coin``, ``action`` (plug |
        replace), ``model_id``, ``current`` (the plugged model or None), ``validation`` (the
        model card's validation scores), ``created_at``, ``activates`` (whether the model
        becomes the coin's active version). Raises ``ControlError`` as the request would."""
        self._check_coin(coin)
        folder = resolve_folder(self.cfg, coin, model_id)
        if folder is None:
            raise ControlError(f"the registry has no model for {coin}; train one first")
        card = read_card(folder)
        timeframe = card.get("feature_schema", {}).get("timeframe")
        if timeframe != self.cfg.market.timeframe:
            raise ControlError(
                f"model {folder.name} trades {timeframe} bars; the daemon trades "
                f"{self.cfg.market.timeframe} ([market].timeframe)"
            )
        current = self.vote.module(coin).model_id if coin in self.vote.coins else None
        active = versions.active_model(self.cfg.training.models_dir, coin)
        return {
            "coin": coin,
            "action": "replace" if current is not None else "plug",
            "model_id": folder.name,
            "current": current,
            "validation": _validation(card),
            "created_at": card.get("created_at"),
            "activates": model_id is not None and active != folder.name,
        }

    def preview_unplug(self, coin: str) -> dict[str, Any]:
        """What :meth:`request_unplug` would do, changing nothing: ``coin``, ``model_id``,
        ``remaining`` (the modules left in the vote). Raises ``ControlError`` as it would."""
        if coin not in self.vote.coins:
            raise ControlError(f"no module is plugged for {coin}; plugged: {list(self.vote.coins)}")
        return {
            "coin": coin,
            "model_id": self.vote.module(coin).model_id,
            "remaining": [c for c in self.vote.coins if c != coin],
        }

    def request_plug(self, coin: str, model_id: str | None, now_ms: int) -> str:
        """Plug ``coin``'s module (or swap to ``model_id`` when it is plugged) next cycle; a
        named model becomes the coin's active version (so a rollback can undo it)."""
        self._check_coin(coin)
        folder = resolve_folder(self.cfg, coin, model_id)
        if folder is None:
            raise ControlError(f"the registry has no model for {coin}; train one first")
        if model_id is not None:
            try:
                versions.activate(
                    self.cfg.training.models_dir, coin, folder.name, reason="manual", at_ms=now_ms
                )
            except versions.VersionError as exc:
                raise ControlError(str(exc)) from None
        action = "replace" if coin in self.vote.coins else "plug"
        self._prepare(coin, action, folder, reason=f"operator {action}")
        verb = "swapped in" if action == "replace" else "plugged"
        return f"{coin}: {folder.name} will be {verb} at the next cycle"

    def request_unplug(self, coin: str) -> str:
        """Unplug ``coin``'s module at the next cycle."""
        if coin not in self.vote.coins:
            raise ControlError(f"no module is plugged for {coin}; plugged: {list(self.vote.coins)}")
        self._cancel(coin)
        self._pending[coin] = _Pending(coin, "unplug", "operator unplug")
        return f"{coin} will be unplugged at the next cycle; the rebalance sells it"

    def request_rollback(self, coin: str, now_ms: int) -> str:
        """Re-activate the previous version of ``coin``'s module and swap it in."""
        self._check_coin(coin)
        try:
            model_id = versions.rollback(self.cfg.training.models_dir, coin, now_ms)
        except versions.VersionError as exc:
            raise ControlError(str(exc)) from None
        folder = model_folder(self.cfg.training.models_dir, model_id)
        action = "replace" if coin in self.vote.coins else "plug"
        self._prepare(coin, action, folder, reason="rollback")
        return f"{coin}: rolled back to {model_id}; swapped in at the next cycle"

    def request_retrain(self, coin: str, now_ms: int) -> str:
        """Start retraining ``coin`` in the updater's worker process."""
        self._check_coin(coin)
        if self.updater is None:
            raise ControlError("retraining needs [updating] enabled = true")
        if coin in self._retraining:
            raise ControlError(f"{coin} is already retraining")
        self._start_retrain(coin, now_ms)
        return (
            f"{coin}: retraining started in a worker process; the validation gate decides the "
            "swap and its verdict is announced when it lands (/modules shows it meanwhile)"
        )

    # -- between cycles ---------------------------------------------------------------------------

    async def between_cycles(self, now_ms: int) -> list[str]:
        """Apply the swaps that are ready, start the retrainings that are due."""
        lines: list[str] = []
        lines += self._collect_retrainings()
        if self.updater is not None:
            for coin in self.updater.due(now_ms):
                if coin not in self._retraining:
                    self._start_retrain(coin, now_ms)
                    lines.append(f"{coin}: scheduled retraining started")
        preparing = [p.task for p in self._pending.values() if p.task and not p.task.done()]
        if preparing:  # a short, bounded wait: the swap lands now if ready, else next cycle
            await asyncio.wait(preparing, timeout=min(10.0, _step(self.cfg) / 4000))
        for coin, pending in list(self._pending.items()):
            if pending.action == "unplug":
                old = self.vote.unplug(coin)
                self._record(coin, "unplug", old.model_id, None, pending.reason)
                del self._pending[coin]
                lines.append(f"{coin}: unplugged {old.model_id}")
                continue
            task = pending.task
            if task is None or not task.done():
                continue
            del self._pending[coin]
            try:
                module, _ = task.result()
            except Exception as exc:
                log.error("%s: could not prepare %s: %s", coin, pending.model_id, exc)
                lines.append(f"{coin}: swap to {pending.model_id} failed: {exc}")
                continue
            module.warm_up(  # the bars stored while it was being prepared
                await history_events(
                    self.cfg, self.market, self.metrics, coin, pending.warmed_until, now_ms
                )
            )
            if coin in self.vote.coins:
                old_id = self.vote.replace(module).model_id
            else:
                self.vote.plug(module)
                old_id = None
            self._record(coin, pending.action, old_id, module.model_id, pending.reason)
            lines.append(f"{coin}: {pending.action} {old_id or '-'} -> {module.model_id}")
        return lines

    async def prepared(self) -> None:
        """Return once every requested plug or swap has its module loaded and warmed up: from
        then on it lands at the next cycle (an unplug needs no preparation)."""
        tasks = [p.task for p in self._pending.values() if p.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def retrained(self) -> None:
        """Return once every running retraining has ended (its verdict is collected, swapped
        in and announced at the next :meth:`between_cycles`)."""
        tasks = list(self._retraining.values())
        if tasks:
            await asyncio.wait(tasks)

    def describe(self) -> list[dict[str, Any]]:
        """The plugged modules (and what waits to be applied)."""
        rows = []
        for coin in self.vote.coins:
            module = self.vote.module(coin)
            latest = self.vote.latest(coin)
            pending = self._pending.get(coin)
            card = getattr(getattr(module, "model", None), "card", None) or {}
            rows.append(
                {
                    "coin": coin,
                    "model_id": module.model_id,
                    "ready": bool(getattr(module, "ready", False)),
                    "last_decision": None if latest is None else latest.coin_weight,
                    "last_decision_ts": None if latest is None else latest.ts,
                    "pending": None if pending is None else f"{pending.action} ({pending.reason})",
                    "validation": _validation(card),
                    "created_at": card.get("created_at"),
                    **self._retrain_state(coin),
                }
            )
        for coin, pending in self._pending.items():
            if coin not in self.vote.coins:
                rows.append(
                    {
                        "coin": coin,
                        "model_id": pending.model_id,
                        "ready": False,
                        "last_decision": None,
                        "last_decision_ts": None,
                        "pending": f"{pending.action} ({pending.reason})",
                        **self._retrain_state(coin),
                    }
                )
        return rows

    def _retrain_state(self, coin: str) -> dict[str, Any]:
        return {
            "retraining": coin in self._retraining,
            "retraining_since": self._retraining_since.get(coin),
            "last_retrain": self.last_retrain.get(coin),
        }

    async def close(self) -> None:
        """Stop preparing swaps; leave a running retraining to finish in its process."""
        for pending in self._pending.values():
            if pending.task is not None:
                pending.task.cancel()
        for task in self._retraining.values():
            task.cancel()
        if self.updater is not None:
            self.updater.close(wait=False)

    # -- internals --------------------------------------------------------------------------------

    def _prepare(self, coin: str, action: str, folder: Path, *, reason: str) -> None:
        self._cancel(coin)
        pending = _Pending(coin, action, reason, folder.name)

        async def prepare() -> tuple[CryptoModule, int]:
            until = await self._last_close(coin)
            pending.warmed_until = until
            since = until - self.cfg.live.warmup_days * DAY_MS
            events = await history_events(self.cfg, self.market, self.metrics, coin, since, until)
            return await asyncio.to_thread(load_module, self.cfg, folder, events)

        pending.task = asyncio.create_task(prepare())
        self._pending[coin] = pending
        log.info("%s: preparing %s (%s) for the next cycle", coin, folder.name, reason)

    async def _last_close(self, coin: str) -> int:
        last = await self.market.last_open_time(
            self.cfg.market.exchange, self.cfg.market.symbol(coin), self.cfg.market.timeframe
        )
        return 0 if last is None else last + _step(self.cfg)

    def _cancel(self, coin: str) -> None:
        pending = self._pending.pop(coin, None)
        if pending is not None and pending.task is not None:
            pending.task.cancel()

    def _start_retrain(self, coin: str, now_ms: int) -> None:
        assert self.updater is not None
        self._retraining[coin] = asyncio.create_task(self.updater.retrain(coin, now_ms))
        self._retraining_since[coin] = now_ms

    def _collect_retrainings(self) -> list[str]:
        lines = []
        for coin, task in list(self._retraining.items()):
            if not task.done():
                continue
            del self._retraining[coin]
            self._retraining_since.pop(coin, None)
            try:
                outcome = task.result()
            except Exception as exc:
                lines.append(f"{coin}: retraining failed: {exc}")
                self.last_retrain[coin] = lines[-1]
                continue
            verdict = "accepted" if outcome.accepted else "rejected"
            lines.append(f"{coin}: retraining {verdict}: {outcome.reason}")
            self.last_retrain[coin] = lines[-1]
            if outcome.swap and outcome.active_folder is not None:
                action = "replace" if coin in self.vote.coins else "plug"
                self._prepare(coin, action, Path(outcome.active_folder), reason="retrained")
        return lines

    def _record(
        self, coin: str, action: str, old: str | None, new: str | None, reason: str
    ) -> None:
        log.warning("hot swap %s: %s %s -> %s (%s)", coin, action, old or "-", new or "-", reason)


def _validation(card: dict[str, Any]) -> dict[str, float] | None:
    """The model card's validation scores (``sam``, ``buy_and_hold``, ...), or None."""
    scores = (card.get("scores") or {}).get("validation")
    if not isinstance(scores, dict) or not scores:
        return None
    return {str(k): float(v) for k, v in scores.items() if isinstance(v, int | float)}


async def build_vote(
    cfg: AppConfig, market: MarketStore, metrics: MetricStore, now_ms: int
) -> tuple[PortfolioVote, VoteHost]:
    """The vote over every configured coin's module, warmed up to ``now_ms``, and its host.

    Raises :class:`NoModulesError` when no coin has a module (see :func:`module_folders`)."""
    vote = PortfolioVote(cfg.market.quote)
    since = now_ms - cfg.live.warmup_days * DAY_MS
    folders = module_folders(cfg)
    for coin in cfg.market.coins:
        folder = folders.get(coin)
        if folder is None:
            log.warning(
                "%s: no model in %s; not plugged (it stays in cash)", coin, cfg.training.models_dir
            )
            continue
        started = time.perf_counter()
        events = await history_events(cfg, market, metrics, coin, since, now_ms)
        module, bars = await asyncio.to_thread(load_module, cfg, folder, events)
        vote.plug(module)
        log.info(
            "%s: plugged %s, warmed up on %d bars in %.1f s",
            coin,
            module.model_id,
            bars,
            time.perf_counter() - started,
        )
    updater = None
    if cfg.updating.enabled:
        from strategies.updating import ModuleUpdater

        updater = ModuleUpdater(cfg)
    return vote, VoteHost(cfg, vote, market, metrics, updater)
