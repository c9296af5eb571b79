"""Stress scenarios grafted onto recent bars, and a module replayed through them.

The Agent Updating Unit's promotion gate asks, before a candidate replaces the running module:
*what would it have done in a crash?* For each named scenario of :mod:`bot.feed.scenarios`
(``covid_crash``: a market-wide crash of 42-55% in two days and a partial recovery;
``luna_collapse``: the coin loses 99.8-99.95% in a week and never recovers; ``flash_crash``: a
32-40% drop inside one hour that recovers within five):

1. :func:`graft_scenario` takes the coin's last ``stress_days`` of bars and bends them by the
   scenario's hourly price path, starting a fifth of the way in (the path's level persists after
   the window: a crash that recovered half stays half down). Opens, highs, lows and closes are
   multiplied by the path's factor at the right hour; volumes are kept. The scenario hits the
   candidate's own coin (a module trades one coin, so the market-wide crash and the single-coin
   collapse both reach it).
2. :func:`stress_replay` recomputes the module's features on the grafted bars with its own frozen
   DRU spec and lets its greedy SAM trade from the scenario's start (starting in cash, with the
   training fee at every change) to the end; it reports the drawdown of that equity and the loss
   at the end (``1 - final / initial``).
3. :class:`StressGate` refuses a candidate whose drawdown or loss in any scenario exceeds the
   configured limits (``[updating].stress_max_drawdown`` / ``stress_max_loss``), with the reason.

The scenario's random draws (the fall's size) come from a generator seeded by ``seed`` and the
scenario's name, so a retraining's stress test is reproducible.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bot.feed.scenarios import PlacedScenario, apply_scenarios, scenario_hours
from bot.timeframes import DAY_MS, HOUR_MS, timeframe_ms
from strategies.agents.env import CoinTensors, portfolio_log_returns
from strategies.agents.observation import build_observations, signal_windows
from strategies.agents.train import coin_history, decision_range, eam_signals, greedy_actions
from strategies.registry import LoadedCryptoModule

START_FRACTION = 0.2
"""Where in the recent bars a scenario starts."""


@dataclass(frozen=True)
class StressResult:
    """How a module fared in one scenario."""

    scenario: str
    drawdown: float
    loss: float
    coin_share: float
    """Share of the replayed decisions in which it held the coin."""
    start_ms: int

    def to_dict(self) -> dict[str, float | str | int]:
        """JSON-ready form."""
        return {
            "scenario": self.scenario,
            "drawdown": self.drawdown,
            "loss": self.loss,
            "coin_share": self.coin_share,
            "start_ms": self.start_ms,
        }


def graft_scenario(bars: pd.DataFrame, scenario: str, start_ms: int, seed: int = 0) -> pd.DataFrame:
    """``bars`` (``open_time, open, high, low, close, volume`` at one timeframe, ascending) with
    ``scenario``'s hourly price path multiplied in from ``start_ms`` on. Bars before it are
    unchanged; the factor reached at the end of the window persists after it."""
    step = int(bars["open_time"].diff().min()) if len(bars) > 1 else HOUR_MS
    end = int(bars["open_time"].iloc[-1]) + step
    hours = scenario_hours(scenario)
    n_hours = max((end - start_ms) // HOUR_MS, 0) + hours  # room for the whole window
    # Hour 0 is a quiet hour before the scenario (the collapse's ceiling is set from it).
    moves = np.zeros(n_hours + 1)
    rng = np.random.default_rng([seed, zlib.crc32(scenario.encode())])
    apply_scenarios(moves, "COIN", [PlacedScenario(scenario, 1, hours + 1, ("COIN",))], rng)
    level = np.cumsum(moves)  # level[k]: log factor after k hours from start_ms
    out = bars.copy()
    start_hour = (out["open_time"].to_numpy(np.int64) - start_ms) // HOUR_MS
    bar_hours = max(step // HOUR_MS, 1)
    factor_open, factor_close = np.ones(len(out)), np.ones(len(out))
    factor_high, factor_low = np.ones(len(out)), np.ones(len(out))
    for i, h in enumerate(start_hour):
        if h + bar_hours <= 0:
            continue
        lo = int(min(max(h, 0), len(level) - 1))
        hi = int(min(h + bar_hours, len(level) - 1))
        inside = level[lo : hi + 1]
        factor_open[i] = math.exp(level[lo])
        factor_close[i] = math.exp(level[hi])
        factor_high[i] = math.exp(inside.max())
        factor_low[i] = math.exp(inside.min())
    out["open"] = out["open"] * factor_open
    out["close"] = out["close"] * factor_close
    out["high"] = np.maximum(out["high"] * factor_high, np.maximum(out["open"], out["close"]))
    out["low"] = np.minimum(out["low"] * factor_low, np.minimum(out["open"], out["close"]))
    return out


def stress_replay(
    model: LoadedCryptoModule,
    bars: pd.DataFrame,
    metrics: pd.DataFrame,
    scenario: str,
    *,
    end_ms: int,
    days: int,
    fee: float,
    seed: int = 0,
) -> StressResult:
    """Graft ``scenario`` onto the ``days`` of ``bars`` before ``end_ms`` and replay the module's
    greedy SAM from the scenario's start (see the module docstring)."""
    timeframe = model.schema.timeframe
    step = timeframe_ms(timeframe)
    recent_start = end_ms - days * DAY_MS
    start_ms = (recent_start + int(START_FRACTION * days) * DAY_MS) // step * step
    known = bars[bars["open_time"].to_numpy() + step <= end_ms].reset_index(drop=True)
    if known.empty or int(known["open_time"].iloc[-1]) + step <= start_ms:
        raise ValueError(f"no bars between {start_ms} and {end_ms} to graft {scenario} onto")
    stressed = graft_scenario(known, scenario, start_ms, seed)
    if model.feature_spec is not None:
        history = coin_history(stressed, metrics, timeframe, model.feature_spec)
        features, ready = history.features, history.ready
    else:
        features, ready = np.zeros((len(stressed), 0)), np.ones(len(stressed), dtype=bool)
    ohlcv = stressed[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
    close_time = stressed["open_time"].to_numpy(np.int64) + step
    window = model.schema.window
    states = build_observations(ohlcv, features, ready, window)
    tensors = CoinTensors.from_arrays(states, ohlcv[:, 3], close_time)
    if model.eam is not None:
        signals = eam_signals(model.eam, tensors.states, window)
        tensors = tensors.with_states(np.concatenate((states, signal_windows(signals, window)), 1))
    decisions = decision_range(close_time, (start_ms, end_ms), window)
    rows = slice(decisions.first, decisions.last)
    actions = greedy_actions(model.sam, tensors.states[rows], "sam")
    net = portfolio_log_returns(tensors.log_returns[rows].numpy(), actions, fee)
    equity = np.concatenate(([0.0], np.cumsum(net)))
    drawdown = float(1.0 - np.exp(np.min(equity - np.maximum.accumulate(equity))))
    return StressResult(
        scenario,
        drawdown,
        float(1.0 - math.exp(equity[-1])),
        float(np.mean(actions)) if len(actions) else 0.0,
        int(start_ms),
    )


@dataclass(frozen=True)
class StressVerdict:
    """Whether a candidate passed every scenario, and why not."""

    passed: bool
    reason: str


class StressGate:
    """Refuses a candidate whose drawdown or loss in any scenario exceeds the limits."""

    def __init__(self, max_drawdown: float, max_loss: float) -> None:
        if not (0 < max_drawdown <= 1 and 0 < max_loss <= 1):
            raise ValueError(
                f"stress limits must be in (0, 1], got drawdown {max_drawdown}, loss {max_loss}"
            )
        self.max_drawdown, self.max_loss = float(max_drawdown), float(max_loss)

    def decide(self, results: Sequence[Mapping[str, float | str]]) -> StressVerdict:
        """The verdict over every scenario's result (:meth:`StressResult.to_dict` form)."""
        failures = []
        for r in results:
            dd, loss = float(r["drawdown"]), float(r["loss"])
            if dd > self.max_drawdown:
                failures.append(f"{r['scenario']} drawdown {dd:.1%} > {self.max_drawdown:.0%}")
            if loss > self.max_loss:
                failures.append(f"{r['scenario']} loss {loss:.1%} > {self.max_loss:.0%}")
        if failures:
            return StressVerdict(False, "stress: " + "; ".join(failures))
        worst = max((float(r["drawdown"]) for r in results), default=0.0)
        return StressVerdict(
            True, f"stress: {len(results)} scenario(s) passed, worst drawdown {worst:.1%}"
        )
