"""``cryptorlpm live diff``: replay what a daemon saw through the same policy, list what differs.

The daemon journals every decision with what it read (``state.db`` table ``decisions``: the
target, the account's weights as the policy decided, the latest bar of each coin, the metrics
received, the modules that decided). The diff builds the policy as the daemon did at its start
(same factory, warmed up on the same stored history), replays the stored bars and metrics as
instants (:func:`bot.engine.step.instants`), and at every journalled close asks the policy with
an account holding what the live one held. A close whose target differs is listed with why:

- the bar data differs (a candle the exchange revised, a bar that arrived after the cycle);
- the metrics differ (a value stored after the decision, or one the daemon never received);
- another module decided (a hot swap, a retraining);
- nothing the daemon read differs: the policy's state diverged at an earlier close (the first
  difference says where), or the policy is not deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.engine.account import Account
from bot.engine.step import DecisionContext, Policy, instants, target_weights
from bot.events import ModuleDecision
from bot.live.warmup import history_instants_inputs, warm_up_policy
from bot.store import MarketStore, MetricStore
from bot.store.journal import Journal
from bot.timeframes import DAY_MS, ms_to_iso, timeframe_ms
from config.schema import AppConfig

TOLERANCE = 1e-9


@dataclass(frozen=True)
class DecisionDiff:
    """One close where the replay decided otherwise than the daemon."""

    ts: int
    live: dict[str, float] | None
    replay: dict[str, float] | None
    why: str


@dataclass(frozen=True)
class DiffReport:
    """Every compared close and the ones that differ."""

    compared: int
    differences: list[DecisionDiff]


async def diff_decisions(cfg: AppConfig, state_db: Path, policy_factory: Any) -> DiffReport:
    """Replay the decisions journalled in ``state_db`` (see the module docstring).

    ``policy_factory``: the daemon's (``(cfg, market, metrics, now_ms) -> (policy, host)``).
    Raises ``FileNotFoundError``/``ValueError`` with a message for a state dir without a
    journal or without decisions.
    """
    if not state_db.exists():
        raise FileNotFoundError(f"{state_db}: no state.db (has `cryptorlpm live` run here?)")
    async with await Journal.open(state_db) as journal:
        decisions = [d for d in await journal.decisions() if d.get("inputs") is not None]
    if not decisions:
        raise ValueError(f"{state_db}: no decision with its inputs is journalled yet")
    first, last = decisions[0]["ts"], decisions[-1]["ts"]
    async with (
        await MarketStore.open(cfg.data.market_path) as market,
        await MetricStore.open(cfg.data.metrics_path) as metrics,
    ):
        start = first - timeframe_ms(cfg.market.timeframe)  # the daemon started after this
        policy, host = await policy_factory(cfg, market, metrics, start)
        if host is None:
            since = start - cfg.live.warmup_days * DAY_MS
            await warm_up_policy(policy, cfg, market, metrics, since, start)
        bars, known = await history_instants_inputs(cfg, market, metrics, start, last)
        known = [m for m in known if m.ts > start]
        if host is not None:
            await host.close()
    by_ts = {d["ts"]: d for d in decisions}
    differences: list[DecisionDiff] = []
    previous = start
    for instant in instants(bars, known, close_at=last):
        decision = by_ts.get(instant.ts)
        if decision is None:
            _observe(policy, instant, cfg)
            previous = instant.ts
            continue
        replay, modules = _decide(policy, instant, cfg, decision["inputs"])
        live = dict(decision["target"]) if decision["target"] is not None else None
        if not _same(live, replay):
            why = _why(decision["inputs"], instant, modules, previous, differences)
            differences.append(DecisionDiff(instant.ts, live, replay, why))
        previous = instant.ts
    return DiffReport(len(decisions), differences)


def _observe(policy: Policy, instant: Any, cfg: AppConfig) -> None:
    policy.decide(DecisionContext(instant._replace(decide=False), Account(cfg.market.quote, 0.0)))


def _decide(
    policy: Policy, instant: Any, cfg: AppConfig, inputs: dict[str, Any]
) -> tuple[dict[str, float] | None, dict[str, str]]:
    """The policy's target at ``instant`` with an account holding the live weights."""
    quote = cfg.market.quote
    account = Account(quote, 0.0)
    for bar in instant.bars:
        account.on_bar(bar)
    equity = 1.0
    weights = inputs.get("weights") or {quote: 1.0}
    account.cash = float(weights.get(quote, 0.0)) * equity
    for asset, weight in weights.items():
        price = account.prices.get(asset)
        if asset != quote and price:
            account.holdings[asset] = float(weight) * equity / price
    context = DecisionContext(instant._replace(decide=True), account)
    wanted = policy.decide(context)
    modules = {n.coin: n.module_id for n in context.notes if isinstance(n, ModuleDecision)}
    if wanted is None:
        return None, modules
    return dict(target_weights(instant.ts, wanted, quote, policy.name).weights), modules


def _same(live: dict[str, float] | None, replay: dict[str, float] | None) -> bool:
    if live is None or replay is None:
        return live is None and replay is None
    assets = set(live) | set(replay)
    return all(abs(live.get(a, 0.0) - replay.get(a, 0.0)) <= TOLERANCE for a in assets)


def _why(
    inputs: dict[str, Any],
    instant: Any,
    modules: dict[str, str],
    previous: int,
    earlier: list[DecisionDiff],
) -> str:
    reasons = []
    seen = {coin: tuple(value) for coin, value in (inputs.get("bars") or {}).items()}
    stored = {b.symbol.split("/")[0]: (b.ts, b.close) for b in instant.bars}
    for coin, (ts, close) in sorted(stored.items()):
        live_ts, live_close = seen.get(coin, (None, None))
        if live_ts != ts:
            when = "no bar" if live_ts is None else f"the bar closing at {ms_to_iso(live_ts)}"
            reasons.append(
                f"{coin}: live decided with {when}; the store has one closing at "
                f"{ms_to_iso(ts)} (it arrived after the cycle)"
            )
        elif abs(live_close - close) > TOLERANCE * max(1.0, abs(close)):
            reasons.append(
                f"{coin}: live saw close {live_close:.8g}, the store has {close:.8g} "
                "(the exchange revised the candle)"
            )
    count = len(instant.metrics)
    if inputs.get("metrics") is not None and inputs["metrics"] != count:
        reasons.append(
            f"metrics: live received {inputs['metrics']} between the closes, the store has "
            f"{count} known in ({ms_to_iso(previous)}, {ms_to_iso(instant.ts)}]"
        )
    live_modules = inputs.get("modules") or {}
    for coin in sorted(set(live_modules) | set(modules)):
        if live_modules.get(coin) != modules.get(coin):
            reasons.append(
                f"{coin}: live module {live_modules.get(coin)}, replay module {modules.get(coin)}"
            )
    if reasons:
        return "; ".join(reasons)
    if earlier:
        return (
            "same inputs: the policy's state diverged at an earlier close "
            f"(first difference at {ms_to_iso(earlier[0].ts)})"
        )
    return "same inputs, another decision: the policy is not deterministic"
