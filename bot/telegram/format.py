"""Plain-text messages: alerts from events and replies from the control service's answers.

Every function here is pure (no I/O, no clock) and answers plain text: no parse mode is used, so
nothing needs escaping and a coin or error text can never break a message. Control answers are
read with ``.get`` and unknown keys are listed at the end, so a richer answer never breaks a
reply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.events import OrderFilled, OrderRejected, RiskRefusal
from bot.telegram.summary import DaySummary

MAX_TEXT = 4096  # Telegram's limit for a message
MAX_CAPTION = 1024  # ... and for a photo caption

COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("status", "", "mode, pause/halt state, cycles, last error, equity"),
    ("balance", "", "equity, cash and positions"),
    ("weights", "", "target and actual weights"),
    ("modules", "", "Crypto Modules: version, validation, readiness, diagnostics"),
    ("audit", "[N]", "the last N closes the guardrails changed (default 5)"),
    ("regime", "", "the regime controller's variant weights and the manager's exposure"),
    ("pause", "", "stop sending orders (decisions go on)"),
    ("resume", "", "send orders again (clears a tripped kill switch)"),
    ("stop", "", "stop the daemon (asks for confirmation)"),
    ("retrain", "COIN", "retrain a coin's module now (the verdict is sent when it lands)"),
    ("plug", "COIN [MODEL_ID]", "plug or swap a module at the next cycle (asks for a code)"),
    ("unplug", "COIN", "unplug a module at the next cycle (asks for a code)"),
    ("confirm", "CODE", "do the /plug or /unplug that sent CODE"),
    ("rollback", "COIN", "back to the previous module version"),
    ("why", "COIN", "the inputs that drove a coin's latest decision"),
    ("help", "", "this list"),
)
"""(name, arguments, description) of every command, in /help order."""


# -- numbers and times ----------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt_money(value: Any) -> str:
    """``1234.5`` -> ``1,234.50``; anything that is not a number is shown as is."""
    if value is None:
        return "n/a"
    if not _is_number(value) or not math.isfinite(value):
        return str(value)
    return f"{value:,.2f}"


def fmt_price(value: Any) -> str:
    """Two decimals from 1 up, four significant digits below: ``43,210.00``, ``0.0001235``."""
    if not _is_number(value) or not math.isfinite(value):
        return fmt_money(value)
    magnitude = abs(value)
    if magnitude >= 1 or magnitude == 0:
        return f"{value:,.2f}"
    decimals = min(12, 3 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def fmt_amount(value: Any) -> str:
    """Up to eight decimals, trailing zeros cut: ``0.0123``, ``1,250``."""
    if not _is_number(value) or not math.isfinite(value):
        return fmt_money(value)
    text = f"{value:,.8f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def fmt_pct(value: Any, *, signed: bool = False) -> str:
    """A fraction as a percentage: ``0.521`` -> ``52.1%`` (``+52.1%`` when ``signed``)."""
    if not _is_number(value) or not math.isfinite(value):
        return fmt_money(value)
    return f"{value * 100:+.2f}%" if signed else f"{value * 100:.1f}%"


def fmt_ts(ms: int) -> str:
    """Epoch milliseconds as ``2024-01-02 10:30 UTC``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def truncate(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to Telegram's ``limit`` (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quote_of(symbol: str) -> str:
    return symbol.split("/", 1)[1] if "/" in symbol else ""


# -- alerts --------------------------------------------------------------------------------------


def format_fill(fill: OrderFilled) -> str:
    """``BUY 0.0123 BTC/USDT @ 43,210.00, fee 0.53 USDT`` + value, order id and time."""
    quote = _quote_of(fill.symbol)
    value = f"{fmt_money(fill.amount * fill.price)} {quote}".rstrip()
    return (
        f"{fill.side.upper()} {fmt_amount(fill.amount)} {fill.symbol} @ {fmt_price(fill.price)}, "
        f"fee {fmt_amount(fill.fee)} {fill.fee_asset}\n"
        f"value {value}, order {fill.client_order_id}, {fmt_ts(fill.ts)}"
    )


def format_rejection(rejected: OrderRejected) -> str:
    """``Order rejected: SELL 0.5 ETH/USDT: <reason>`` + order id and time."""
    return (
        f"Order rejected: {rejected.side.upper()} {fmt_amount(rejected.amount)} "
        f"{rejected.symbol}: {rejected.reason}\n"
        f"order {rejected.client_order_id}, {fmt_ts(rejected.ts)}"
    )


def format_refusal(refusal: RiskRefusal) -> str:
    """``Risk refusal (max_weight) BTC: wanted 0.6 → allowed 0.4`` + detail and time."""
    text = (
        f"Risk refusal ({refusal.rule}) {refusal.asset}: wanted {fmt_amount(refusal.wanted)} "
        f"→ allowed {fmt_amount(refusal.allowed)}"
    )
    if refusal.detail:
        text += f"\n{refusal.detail}"
    return f"{text}\n{fmt_ts(refusal.ts)}"


def format_error(text: str) -> str:
    """An error the daemon reports."""
    return truncate(f"ERROR: {text}")


def format_notice(text: str) -> str:
    """Any other message the daemon sends."""
    return truncate(text)


def format_started(summary: str) -> str:
    """The daemon started (``summary``: what it runs, in the daemon's words)."""
    return truncate(f"cryptorlpm started\n{summary}".rstrip())


def format_stopped(summary: str) -> str:
    """The daemon stopped."""
    return truncate(f"cryptorlpm stopped\n{summary}".rstrip())


def format_summary(summary: DaySummary, quote: str) -> str:
    """Daily summary: equity, change over the period, fills and refusals counts."""
    pct = summary.change_pct
    change = f"{'+' if summary.change >= 0 else ''}{fmt_money(summary.change)} {quote}"
    if pct is not None:
        change = f"{fmt_pct(pct, signed=True)}, {change}"
    return truncate(
        f"Daily summary {fmt_ts(summary.end_ts)}\n"
        f"Equity {fmt_money(summary.equity)} {quote} ({change})\n"
        f"since {fmt_ts(summary.start_ts)}\n"
        f"Fills: {summary.fills}, risk refusals: {summary.refusals}",
        MAX_CAPTION,
    )


# -- control answers ------------------------------------------------------------------------------


def _extras(answer: Mapping[str, Any], known: Iterable[str]) -> list[str]:
    known = set(known)
    return [f"{key}: {value}" for key, value in answer.items() if key not in known]


def format_status(status: Mapping[str, Any]) -> str:
    """Reply to /status."""
    quote = status.get("quote") or ""
    if status.get("halted"):
        state = f"HALTED: {status['halted']}"
    else:
        state = "paused" if status.get("paused") else "running"
    lines = [
        f"Status: {state}",
        f"Mode: {status.get('mode', 'n/a')}",
        f"Equity: {fmt_money(status.get('equity'))} {quote}".rstrip(),
        f"Cycles: {status.get('cycles', 'n/a')} (last {status.get('last_cycle') or 'never'})",
        f"Last error: {status.get('last_error') or 'none'}",
        *(status.get("trading") or ()),
    ]
    known = (
        "mode",
        "paused",
        "halted",
        "cycles",
        "last_cycle",
        "last_error",
        "equity",
        "quote",
        "trading",
        "last_cycle_status",
    )
    return truncate("\n".join(lines + _extras(status, known)))


def format_balance(balance: Mapping[str, Any]) -> str:
    """Reply to /balance: one line per position with its value and weight."""
    quote = balance.get("quote") or ""
    equity, cash = balance.get("equity"), balance.get("cash")
    cash_line = f"Cash {fmt_money(cash)} {quote}".rstrip()
    if _is_number(equity) and _is_number(cash) and equity > 0:
        cash_line += f" ({fmt_pct(cash / equity)})"
    lines = [f"Equity {fmt_money(equity)} {quote}".rstrip(), cash_line]
    positions: Sequence[Mapping[str, Any]] = balance.get("positions") or ()
    for position in positions:
        line = (
            f"{position.get('coin', '?')} {fmt_amount(position.get('amount'))} "
            f"@ {fmt_price(position.get('price'))} = {fmt_money(position.get('value'))} {quote}"
        ).rstrip()
        if position.get("weight") is not None:
            line += f" ({fmt_pct(position.get('weight'))})"
        lines.append(line)
    if not positions:
        lines.append("No coins held.")
    known = ("quote", "equity", "cash", "positions")
    return truncate("\n".join(lines + _extras(balance, known)))


def format_weights(weights: Mapping[str, Any]) -> str:
    """Reply to /weights: target (after the guardrails) and actual weight per asset."""
    target: Mapping[str, float] = weights.get("target") or {}
    actual: Mapping[str, float] = weights.get("actual") or {}
    when = weights.get("ts")
    lines = [f"Weights (decision {when})" if when else "Weights (no decision yet)"]
    assets = list(target) + [asset for asset in actual if asset not in target]
    for asset in assets:
        wanted = fmt_pct(target[asset]) if asset in target else "-"
        held = fmt_pct(actual[asset]) if asset in actual else "-"
        lines.append(f"{asset}: target {wanted}, actual {held}")
    if not assets:
        lines.append("No weights.")
    return truncate("\n".join(lines + _extras(weights, ("target", "actual", "ts"))))


_MODULE_KEYS = (
    "coin",
    "model_id",
    "ready",
    "readiness",
    "last_decision",
    "last_decision_ts",
    "pending",
    "validation",
    "created_at",
    "last_bar",
    "retraining",
    "retraining_since",
    "last_retrain",
    "diagnostics",
)


def _validation_text(validation: Mapping[str, Any]) -> str:
    parts = [f"{name.replace('_', ' ')} {fmt_signed(value)}" for name, value in validation.items()]
    return "validation log return: " + ", ".join(parts)


def fmt_signed(value: Any) -> str:
    """A score with its sign and three decimals: ``+0.123``."""
    return f"{value:+.3f}" if _is_number(value) and math.isfinite(value) else fmt_money(value)


def _diagnostics_text(coin: str, diagnostics: Mapping[str, Any]) -> str:
    n = diagnostics.get("decisions") or 0
    if not n:
        return "no journalled decision of this version yet"
    text = (
        f"last {n} decisions: in {coin} {fmt_pct(diagnostics.get('in_coin'))} of the time, "
        f"flipped at {fmt_pct(diagnostics.get('flip_rate'))} of them"
    )
    if diagnostics.get("last_flip"):
        text += f" (last {diagnostics['last_flip']})"
    return text


def format_modules(modules: Sequence[Mapping[str, Any]]) -> str:
    """Reply to /modules: a line per plugged module (version, readiness, last weight), then
    its validation, freshness, diagnostics and retraining on indented lines when known."""
    if not modules:
        return "No modules plugged."
    lines = [f"Modules ({len(modules)})"]
    for module in modules:
        coin = module.get("coin", "?")
        state = module.get("readiness") or ("ready" if module.get("ready") else "not ready")
        parts = [f"{coin}: {module.get('model_id', '?')}", str(state)]
        last = module.get("last_decision")
        if last is None:
            parts.append("no decision yet")
        else:
            when = module.get("last_decision_ts")
            parts.append(f"last weight {fmt_pct(last)}" + (f" at {when}" if when else ""))
        if module.get("pending"):
            parts.append(f"pending: {module['pending']}")
        parts.extend(_extras(module, _MODULE_KEYS))
        lines.append(", ".join(parts))
        details = []
        if module.get("validation"):
            details.append(_validation_text(module["validation"]))
        if module.get("created_at"):
            details.append(f"trained {module['created_at']}")
        if module.get("last_bar"):
            details.append(f"last bar {module['last_bar']}")
        if details:
            lines.append("  " + "; ".join(details))
        if module.get("diagnostics") is not None:
            lines.append("  " + _diagnostics_text(str(coin), module["diagnostics"]))
        if module.get("retraining"):
            since = module.get("retraining_since")
            lines.append("  retraining now" + (f" (since {since})" if since else ""))
        if module.get("last_retrain"):
            lines.append(f"  last retraining: {module['last_retrain']}")
    return truncate("\n".join(lines))


def format_audit(audit: Mapping[str, Any]) -> str:
    """Reply to /audit: per close, each asset's wanted -> allowed weight and the rules that
    changed it, then the orders the market's filters trimmed."""
    closes: Sequence[Mapping[str, Any]] = audit.get("closes") or ()
    scanned, since = audit.get("scanned") or 0, audit.get("since")
    if not scanned:
        return "No decision journalled yet."
    looked = f"{scanned} decisions since {since}" if since else f"{scanned} decisions"
    if not closes:
        return f"The guardrails changed nothing in the last {looked}."
    lines = [f"Guardrail audit: {len(closes)} close(s) changed, in the last {looked}"]
    for close in closes:
        head = f"{close.get('ts')}"
        if close.get("source"):
            head += f" ({close['source']})"
        lines.append(f"{head}, {close.get('orders', 0)} order(s)")
        for change in close.get("changes") or ():
            allowed = change.get("allowed")
            allowed_text = "nothing (kill switch)" if allowed is None else fmt_pct(allowed)
            lines.append(
                f"  {change.get('asset')}: wanted {fmt_pct(change.get('wanted'))} -> allowed "
                f"{allowed_text} ({change.get('rules')})"
            )
        for trim in close.get("trims") or ():
            lines.append(
                f"  trimmed {str(trim.get('side', '')).upper()} {trim.get('coin')}: "
                f"{fmt_amount(trim.get('wanted'))} -> {fmt_amount(trim.get('planned'))} "
                f"({trim.get('reason')})"
            )
    return truncate("\n".join(lines))


def _weights_line(weights: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{name} {fmt_pct(value)}"
        for name, value in sorted(weights.items(), key=lambda kv: -_sort_value(kv[1]))
    )


def _sort_value(value: Any) -> float:
    return float(value) if _is_number(value) and math.isfinite(value) else -math.inf


def _feature_text(value: Any) -> str:
    """A feature's value, or a coin's features (``volatility +0.031, trend -0.010``)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{name} {_feature_text(v)}" for name, v in value.items())
    return fmt_signed(value) if _is_number(value) else str(value)


def format_regime(regime: Mapping[str, Any]) -> str:
    """Reply to /regime: the manager's gross exposure, the controller's weights per coin and
    the regime features; or plainly that the policy has no regime controller."""
    policy = regime.get("policy") or "?"
    if not regime.get("controller"):
        return f"Policy {policy} has no regime controller."
    state: Mapping[str, Any] | None = regime.get("state")
    if not state:
        return f"Policy {policy}: its regime controller has not decided yet."
    when = state.get("ts")
    when_text = fmt_ts(when) if _is_number(when) else when
    lines = [f"Regime (policy {policy}" + (f", {when_text})" if when_text else ")")]
    if state.get("exposure") is not None:
        lines.append(f"Manager's gross exposure: {fmt_pct(state['exposure'])}")
    variants: Mapping[str, Mapping[str, Any]] = state.get("variants") or {}
    if variants:
        lines.append("Controller's variant weights:")
        lines += [f"  {coin}: {_weights_line(weights)}" for coin, weights in variants.items()]
    features: Mapping[str, Any] = state.get("features") or {}
    if features:
        lines.append("Regime features now:")
        lines += [f"  {name}: {_feature_text(value)}" for name, value in features.items()]
    lines += _extras(state, ("ts", "exposure", "variants", "features"))
    return truncate("\n".join(lines))


def format_why(why: Mapping[str, Any], top: int = 5) -> str:
    """Reply to /why COIN: the decision, its Q-values and the inputs that drove it."""
    coin = why.get("coin", "?")
    action = str(why.get("action", "?")).replace("_", " ")
    weight = why.get("weight")
    head = f"{coin} at {why.get('ts', '?')}: {action}"
    if weight is not None:
        head += f" (target weight {fmt_pct(weight)})"
    q = why.get("q") or {}
    lines = [head]
    if q:
        lines.append("Q: " + ", ".join(f"{a.replace('_', ' ')} {v:+.4f}" for a, v in q.items()))
    inputs = list(why.get("top") or [])[:top]
    if inputs:
        lines.append("Drivers (+ for the action, - against):")
        lines.extend(f"  {name} {value:+.4f}" for name, value in inputs)
    eam = why.get("eam")
    if isinstance(eam, Mapping) and eam.get("action"):
        drivers = ", ".join(f"{n} {v:+.3f}" for n, v in list(eam.get("top") or [])[:3])
        lines.append(f"EAM signal: {eam['action']}" + (f" ({drivers})" if drivers else ""))
    if why.get("model_id"):
        lines.append(f"module {why['model_id']}")
    return truncate("\n".join(lines))


def format_help() -> str:
    """Reply to /help."""
    lines = [f"/{name} {args} - {text}".replace("  ", " ") for name, args, text in COMMANDS]
    return "Commands:\n" + "\n".join(lines)
