"""Per-module diagnostics of a Crypto Module vote: is each module really trading, and at what cost?

From the :class:`~bot.events.ModuleDecision` events a vote run recorded (one per bar of the
module's coin, at its close) and the run's fills:

* ``coin_share`` / ``cash_share``: the share of decisions in which the module held its coin (more
  than half of its sleeve: a seed bag or a MARS blend holds fractions) or cash;
* ``flips_per_month``: position changes (cash to coin or back, by that rule) per 30 days of
  decisions;
* ``turnover``: the coin's traded notional over the run's mean equity (the portfolio's turnover
  split by coin), and ``fees_share``: the fees paid on that coin over the initial capital;
* ``degenerate``: why the module is suspicious, or None: ``never trades`` (all cash at every
  decision), ``always in`` (all coin at every decision) or ``untrained checkpoint`` (the kept SAM
  checkpoint was chosen before any gradient update: training never beat its starting point).

Only decisions inside the scored period count (warm-up decisions before the first decision
close are dropped by the caller or by ``start_ms``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backtest.result import RunResult
from bot.events import ModuleDecision
from bot.timeframes import DAY_MS
from strategies.registry import read_card

MONTH_MS = 30 * DAY_MS


def untrained_checkpoint(folder: Path) -> bool:
    """Whether a registry model kept a SAM checkpoint scored before its first gradient update
    (``best_env_steps <= learning_starts``); for a MARS ensemble, whether any learned variant
    did."""
    from strategies.mars.artifact import is_ensemble
    from strategies.mars.artifact import read_card as read_ensemble_card

    mars = is_ensemble(Path(folder))
    card = read_ensemble_card(folder) if mars else read_card(Path(folder))
    starts = int(((card.get("params") or {}).get("sam") or {}).get("learning_starts", 0))
    if mars:
        best_steps = (card.get("training_run") or {}).get("best_env_steps") or {}
        return any(int(step) <= starts for step in best_steps.values())
    sam = (card.get("training_run") or {}).get("sam") or {}
    best = sam.get("best_env_steps")
    return best is not None and int(best) <= starts


def module_diagnostics(
    decisions: Iterable[ModuleDecision],
    run: RunResult,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    untrained: Mapping[str, bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Diagnostics per coin (see the module docstring) over ``[start_ms, end_ms)``.

    ``untrained``: per coin, whether (any of) its module(s) kept an untrained checkpoint.
    """
    by_coin: dict[str, list[ModuleDecision]] = {}
    for d in decisions:
        if (start_ms is None or d.ts >= start_ms) and (end_ms is None or d.ts < end_ms):
            by_coin.setdefault(d.coin, []).append(d)
    equity = run.equity.to_numpy(float)
    mean_equity = float(equity.mean()) if len(equity) else float(run.initial_cash)
    trades = run.trades
    out: dict[str, dict[str, Any]] = {}
    for coin, rows in by_coin.items():
        weights = np.array([d.coin_weight for d in rows], dtype=float)
        held = weights > 0.5
        span_ms = max(rows[-1].ts - rows[0].ts, 1)
        flips = int(np.count_nonzero(held[1:] != held[:-1]))
        mine = trades[trades["symbol"].str.split("/").str[0] == coin] if len(trades) else trades
        notional = float(mine["notional"].abs().sum()) if len(mine) else 0.0
        fees = _fees_in_quote(mine, run.quote)
        coin_share = float(held.mean())
        untrained_flag = bool((untrained or {}).get(coin, False))
        out[coin] = {
            "decisions": len(rows),
            "coin_share": coin_share,
            "cash_share": 1.0 - coin_share,
            "flips": flips,
            "flips_per_month": flips * MONTH_MS / span_ms,
            "turnover": notional / mean_equity if mean_equity > 0 else float("nan"),
            "fees_share": fees / float(run.initial_cash) if run.initial_cash else float("nan"),
            "untrained_checkpoint": untrained_flag,
            # by the mean weight: a module holding a fraction of its sleeve does trade
            "degenerate": degenerate_reason(float(weights.mean()), untrained_flag),
        }
    return out


def degenerate_reason(coin_share: float, untrained: bool) -> str | None:
    """``never trades``, ``always in``, ``untrained checkpoint`` or None (in that order), from
    the module's mean coin weight over its decisions (``coin_share``: 0 all cash throughout, 1
    all coin throughout)."""
    if coin_share == 0.0:
        return "never trades"
    if coin_share == 1.0:
        return "always in"
    if untrained:
        return "untrained checkpoint"
    return None


def _fees_in_quote(trades: Any, quote: str) -> float:
    """Fees of ``trades`` in the quote currency (a fee in the coin is valued at the fill price)."""
    if not len(trades):
        return 0.0
    fee = trades["fee"].to_numpy(float)
    in_quote = trades["fee_asset"].to_numpy() == quote
    return float(np.sum(np.where(in_quote, fee, fee * trades["price"].to_numpy(float))))


def flagged(diagnostics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"COIN: reason"`` for every degenerate module."""
    return [f"{coin}: {d['degenerate']}" for coin, d in diagnostics.items() if d["degenerate"]]


def average_diagnostics(per_seed: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per coin: the mean over seeds of every numeric diagnostic, and the count of seeds whose
    module was flagged (with the reasons)."""
    coins = dict.fromkeys(c for run in per_seed for c in run)
    out: dict[str, Any] = {}
    for coin in coins:
        rows = [run[coin] for run in per_seed if coin in run]
        keys = ("coin_share", "flips_per_month", "turnover", "fees_share")
        out[coin] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        reasons = [r["degenerate"] for r in rows if r["degenerate"]]
        out[coin]["degenerate_seeds"] = len(reasons)
        out[coin]["reasons"] = sorted(set(reasons))
    return out
