"""What the dashboard shows: one JSON snapshot assembled from the daemon's controls and its
databases.

The live parts (equity, weights, module health, pause and kill-switch state) come through the
:class:`bot.control.Controls` protocol, as Telegram gets them; the history (decisions, refusals,
bars, metrics) comes from read-only views of the databases (:class:`StateReader`).

Baselines: from the first journalled decision on, the same starting equity is followed through
two simple portfolios on the same stored closes the daemon decided at: ``1/N`` (equal weights,
rebalanced at every close) and ``buy & hold`` (equal weights bought at the first close, then
held). Both are before fees and slippage, which the daemon's own curve pays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bot.control import Controls
from bot.dashboard.reader import StateReader
from bot.timeframes import ms_to_iso, timeframe_ms
from config.schema import AppConfig


@dataclass(frozen=True)
class EquityCurves:
    """The daemon's equity at each journalled close and the baselines on the same closes."""

    ts: list[int]
    equity: list[float]
    equal_weight: list[float | None]
    buy_and_hold: list[float | None]


def baseline_curves(
    ts: list[int], equity: list[float], closes: dict[str, dict[int, float]]
) -> tuple[list[float | None], list[float | None]]:
    """The 1/N (rebalanced at every close) and buy-and-hold (1/N bought at the first close)
    curves starting from ``equity[0]``; ``closes``: coin -> close time -> close.

    A coin enters both baselines at its first known close (its share is held in cash before);
    a missing close is carried forward. ``None`` where no coin has a close yet.
    """
    n, coins = len(ts), sorted(closes)
    if n == 0 or not coins:
        return [None] * n, [None] * n
    frame = pd.DataFrame({coin: [closes[coin].get(t, np.nan) for t in ts] for coin in coins})
    prices = frame.ffill().to_numpy(dtype=float)  # a missing close is carried forward
    start = float(equity[0])
    share = start / len(coins)
    # buy & hold: each coin's share bought at its first known close, cash until then
    first = np.array(
        [prices[np.argmax(~np.isnan(prices[:, j])), j] for j in range(len(coins))], dtype=float
    )
    held = np.where(np.isnan(prices), share, share * prices / first)
    hold = held.sum(axis=1)
    # 1/N: back to equal weights at every close; a coin without a close yet counts as cash
    growth = np.ones_like(prices)
    growth[1:] = np.where(
        np.isnan(prices[1:]) | np.isnan(prices[:-1]), 1.0, prices[1:] / prices[:-1]
    )
    rebalanced = start * np.cumprod(growth.mean(axis=1))
    none_yet = np.isnan(prices).all(axis=1)
    return (
        [None if none_yet[i] else float(rebalanced[i]) for i in range(n)],
        [None if none_yet[i] else float(hold[i]) for i in range(n)],
    )


def thin(count: int, points: int) -> list[int]:
    """At most ``points`` evenly spread indices of ``range(count)``, the first and last kept."""
    if count <= points:
        return list(range(count))
    picked = np.linspace(0, count - 1, points).round().astype(int)
    return sorted(set(picked.tolist()))


class DashboardView:
    """Builds the dashboard's snapshot; the equity curves are recomputed only when a new
    decision was journalled."""

    def __init__(self, cfg: AppConfig, controls: Controls, reader: StateReader) -> None:
        self.cfg = cfg
        self.controls = controls
        self.reader = reader
        self._curves: EquityCurves | None = None
        self._curves_key: tuple[int, int] | None = None

    async def curves(self) -> EquityCurves:
        """Equity and baselines at every journalled decision."""
        key = await self.reader.decisions_key()
        if self._curves is not None and key == self._curves_key:
            return self._curves
        rows = await self.reader.equity()
        ts = [t for t, _ in rows]
        equity = [e for _, e in rows]
        market = self.cfg.market
        step = timeframe_ms(market.timeframe)
        closes: dict[str, dict[int, float]] = {}
        if ts:
            for coin in market.coins:
                by_open = await self.reader.closes(
                    market.exchange, market.symbol(coin), market.timeframe, ts[0] - step, ts[-1]
                )
                closes[coin] = {open_time + step: close for open_time, close in by_open.items()}
        equal, hold = baseline_curves(ts, equity, closes)
        self._curves = EquityCurves(ts, equity, equal, hold)
        self._curves_key = key
        return self._curves

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data (see the module docstring)."""
        board = self.cfg.dashboard
        status = await self.controls.status()
        balance = await self.controls.balance()
        weights = await self.controls.weights()
        modules = await self.controls.modules()
        decisions = await self.reader.decisions(board.decisions)
        refusals = await self.reader.refusals(board.refusals)
        curves = await self.curves()
        latest = next((d for d in reversed(decisions) if d.get("target") is not None), None)
        picked = thin(len(curves.ts), board.chart_points)
        last_ts = curves.ts[-1] if curves.ts else None
        return clean(
            {
                "status": status,
                "balance": balance,
                "weights": _weight_rows(latest, weights, balance),
                "weights_ts": None if latest is None else ms_to_iso(int(latest["ts"])),
                "equity": {
                    "ts": [curves.ts[i] for i in picked],
                    "daemon": [curves.equity[i] for i in picked],
                    "equal_weight": [curves.equal_weight[i] for i in picked],
                    "buy_and_hold": [curves.buy_and_hold[i] for i in picked],
                    "since": None if not curves.ts else ms_to_iso(curves.ts[0]),
                    "last": _last_values(curves),
                },
                "decisions": [_decision_row(d) for d in reversed(decisions)],
                "refusals": [{**r, "time": ms_to_iso(int(r["ts"]))} for r in reversed(refusals)],
                "modules": modules,
                "freshness": await self._freshness(last_ts),
                "metrics": [
                    {**m, "observed": ms_to_iso(int(m["observed_at"]))}
                    for m in await self.reader.last_metrics(self._metric_assets())
                ],
            }
        )

    def _metric_assets(self) -> tuple[str, ...]:
        coins = tuple(self.cfg.market.coins)
        return coins + tuple(a for a in self.cfg.metrics.market_wide_assets if a not in coins)

    async def _freshness(self, last_decision: int | None) -> list[dict[str, Any]]:
        """Each coin's newest stored bar and how many bars it lags the latest decision."""
        market = self.cfg.market
        step = timeframe_ms(market.timeframe)
        rows = []
        for coin in market.coins:
            bar = await self.reader.last_bar(market.exchange, market.symbol(coin), market.timeframe)
            close_ms = None if bar is None else int(bar["open_time"]) + step
            lag = (
                None
                if close_ms is None or last_decision is None
                else max(0, (last_decision - close_ms) // step)
            )
            rows.append(
                {
                    "coin": coin,
                    "last_close": None if close_ms is None else ms_to_iso(close_ms),
                    "price": None if bar is None else bar["close"],
                    "volume": None if bar is None else bar["volume"],
                    "bars_behind": lag,
                }
            )
        return rows


def _weight_rows(
    latest: dict[str, Any] | None, weights: dict[str, Any], balance: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per asset: what the latest decision wanted and what the guardrails allowed (from
    the journal), and the weight and value held now (from the controls)."""
    wanted = dict((latest or {}).get("target") or [])
    allowed = dict((latest or {}).get("allowed") or [])
    actual = weights.get("actual") or {}
    values = {p["coin"]: p.get("value") for p in balance.get("positions", [])}
    quote = balance.get("quote")
    if quote is not None:
        values.setdefault(quote, balance.get("cash"))
    assets = sorted(set(wanted) | set(allowed) | set(actual) | {a for a, v in values.items() if v})
    return [
        {
            "asset": a,
            "wanted": wanted.get(a),
            "allowed": allowed.get(a),
            "actual": actual.get(a, 0.0),
            "value": values.get(a),
        }
        for a in assets
    ]


def _last_values(curves: EquityCurves) -> dict[str, float | None]:
    if not curves.ts:
        return {"daemon": None, "equal_weight": None, "buy_and_hold": None}
    return {
        "daemon": curves.equity[-1],
        "equal_weight": curves.equal_weight[-1],
        "buy_and_hold": curves.buy_and_hold[-1],
    }


def _decision_row(row: dict[str, Any]) -> dict[str, Any]:
    """A journalled decision as the page lists it: per asset wanted -> allowed and the rules
    that changed it, the orders trimmed, the modules that decided, the explanation if any."""
    wanted = dict(row.get("target") or [])
    allowed = dict(row.get("allowed") or []) if row.get("allowed") is not None else None
    rules: dict[str, list[str]] = {}
    for rule, asset, *_ in row.get("refusals") or []:
        rules.setdefault(asset, []).append(rule)
    assets = sorted(set(wanted) | set(allowed or {}))
    inputs = row.get("inputs") or {}
    return {
        "ts": row["ts"],
        "time": ms_to_iso(int(row["ts"])),
        "source": row.get("source"),
        "equity": row.get("equity"),
        "weights": [
            {
                "asset": a,
                "wanted": wanted.get(a),
                "allowed": None if allowed is None else allowed.get(a),
                "rules": rules.get(a, []),
            }
            for a in assets
        ],
        "refusals": row.get("refusals") or [],
        "trims": row.get("trims") or [],
        "orders": len(row.get("orders") or []),
        "modules": inputs.get("modules") if isinstance(inputs, dict) else None,
        "explanation": row.get("explanation"),
    }


def clean(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
