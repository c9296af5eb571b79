"""Performance metrics of one backtest run, computed from its :class:`~backtest.result.RunResult`.

Definitions (``E_t``: the recorded equity curve in the quote currency at every decision close;
``E_0``: its first value, the equity before any trade, which the run contract makes the initial
cash; ``r_1 .. r_n``: the daily returns of :func:`daily_returns`; ``n``: their number):

* **Daily returns.** The equity at the last close of every UTC day, over the equity at the last
  close of the day before. A close time is the *end* of its bar, so a close at exactly 00:00 UTC
  ends the previous day and counts in it. The first day's return is measured from ``E_0`` (so a
  run that starts mid-day has a partial first day, and the daily returns compound exactly to
  ARR); when ``E_0`` is the only close of its day, that day is the anchor and has no return. A
  calendar day without any close (a data gap, or a timeframe longer than a day) repeats the
  previous close, i.e. counts as a day of zero return, so every calendar day of the run counts.
* **days** = ``n``, the number of daily returns (calendar days of the run).
* **ARR**, the paper's accumulated rate of return = ``E_T / E_0 - 1``.
* **DRR**, the paper's daily rate of return = ``mean(r)``.
* **Sortino**, the paper's SR = ``mean(r) / DD * sqrt(365)`` where the downside deviation
  ``DD = sqrt(mean(min(r_i, 0)^2))`` is taken over *all* days (target return 0).
* **Sharpe** = ``mean(r) / std(r) * sqrt(365)``, ``std`` with ``ddof=1``, risk-free rate 0.
* **volatility** (annualised) = ``std(r) * sqrt(365)``, ``ddof=1``.
* **MDD**, maximum drawdown = ``max_t (1 - E_t / max_{s<=t} E_s)``, a positive fraction taken on
  the full-resolution equity curve (every decision close, ``E_0`` included), so an intraday dip
  that has recovered by the day's close still counts.
* **CAGR** = ``(E_T / E_0) ** (365 / n) - 1`` (``-1`` when the equity is wiped out).
* **Calmar** = ``CAGR / MDD``.
* **turnover** = total traded notional (``sum |amount * price|`` over all fills, quote currency)
  over the mean of ``E_t``, for the whole run: 2.0 means the strategy bought and sold about its
  average equity once. **annual_turnover** = ``turnover * 365 / n``.
* **fees** = total fees paid in the quote currency (:attr:`RunResult.fees_paid`).
* **trades** = number of fills. **final_equity** = ``E_T`` (the initial cash when nothing was
  recorded).

Crypto markets trade every day, so annualisation uses 365 days.

Edge cases: a ratio is ``NaN`` ("undefined") when its denominator is zero or cannot be computed:
Sharpe and volatility need at least two daily returns; Sharpe is ``NaN`` when ``std(r)`` is 0,
Sortino when no day lost money (``DD`` is 0), Calmar when ``MDD`` is 0, DRR and CAGR when there
is no daily return at all. So a run that only holds cash has ARR, DRR, volatility and MDD of 0
and ``NaN`` Sharpe, Sortino and Calmar. Standard deviations below ``1e-12`` count as zero.
ARR, MDD, turnover, fees and trades are always defined (0 for an empty run).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from backtest.result import RunResult
from bot.timeframes import DAY_MS

DAYS_PER_YEAR = 365
"""Crypto trades every calendar day."""

METRIC_KEYS = (
    "arr",
    "drr",
    "sortino",
    "sharpe",
    "volatility",
    "mdd",
    "calmar",
    "cagr",
    "turnover",
    "annual_turnover",
    "fees",
    "trades",
    "final_equity",
    "days",
)
"""Keys of :func:`compute_metrics`, in table order."""

INTEGER_METRICS = frozenset({"trades", "days"})
"""Metrics that are counts (``int``); every other metric is a ``float``."""

_ZERO_STD = 1e-12


def compute_metrics(result: RunResult) -> dict[str, float | int]:
    """Every metric of :data:`METRIC_KEYS` for one run, as defined in this module's docstring."""
    equity = result.equity.to_numpy(dtype=float)
    start = float(equity[0]) if len(equity) else float(result.initial_cash)
    final = result.final_equity
    returns = daily_returns(result).to_numpy()
    days = len(returns)
    arr = final / start - 1.0 if start else math.nan
    mean = float(returns.mean()) if days else math.nan
    std = float(returns.std(ddof=1)) if days >= 2 else math.nan
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))) if days else math.nan
    annual = math.sqrt(DAYS_PER_YEAR)
    mdd = max_drawdown(result.equity)
    cagr = _cagr(arr, days)
    notional = float(result.trades["notional"].abs().sum()) if len(result.trades) else 0.0
    mean_equity = float(equity.mean()) if len(equity) else float(result.initial_cash)
    turnover = notional / mean_equity if mean_equity > 0 else math.nan
    return {
        "arr": arr,
        "drr": mean,
        "sortino": _ratio(mean, downside) * annual,
        "sharpe": _ratio(mean, std) * annual,
        "volatility": std * annual,
        "mdd": mdd,
        "calmar": cagr / mdd if mdd > 0 else math.nan,
        "cagr": cagr,
        "turnover": turnover,
        "annual_turnover": turnover * DAYS_PER_YEAR / days if days else math.nan,
        "fees": float(result.fees_paid),
        "trades": len(result.trades),
        "final_equity": float(final),
        "days": days,
    }


def daily_returns(result: RunResult) -> pd.Series:
    """Daily simple returns of the run's equity (see the module docstring for the day rule).

    Index: the UTC day (a tz-aware ``DatetimeIndex`` at midnight, named ``day``); values: the
    return of that day as a fraction. Empty when fewer than two closes were recorded.
    """
    equity = result.equity
    if len(equity) < 2:
        return pd.Series([], index=pd.DatetimeIndex([], tz="UTC", name="day"), dtype=float)
    close_ms = equity.index.to_numpy(dtype="int64")
    day = (close_ms - 1) // DAY_MS  # a close at 00:00 ends the previous day's last bar
    values = equity.to_numpy(dtype=float)
    closes = pd.Series(values).groupby(day).last()
    closes = closes.reindex(np.arange(day[0], day[-1] + 1)).ffill()
    previous = closes.shift(1)
    previous.iloc[0] = values[0]
    returns = closes / previous - 1.0
    if np.count_nonzero(day == day[0]) == 1:
        returns = returns.iloc[1:]  # the first day holds only E_0: it is the anchor
    index = pd.to_datetime(returns.index.to_numpy() * DAY_MS, unit="ms", utc=True)
    return pd.Series(returns.to_numpy(), index=index.rename("day"), name="daily_return")


def drawdowns(equity: pd.Series) -> pd.Series:
    """Drawdown at every close: ``1 - E_t / max_{s<=t} E_s`` (0 at a new high, positive below)."""
    peak = equity.cummax()
    return (1.0 - equity / peak).rename("drawdown")


def max_drawdown(equity: pd.Series) -> float:
    """Largest :func:`drawdowns` value of an equity curve (0 for an empty or rising curve)."""
    return float(drawdowns(equity).max()) if len(equity) else 0.0


def _cagr(arr: float, days: int) -> float:
    if not days or math.isnan(arr):
        return math.nan
    growth = 1.0 + arr
    return growth ** (DAYS_PER_YEAR / days) - 1.0 if growth > 0 else -1.0


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator < _ZERO_STD:
        return math.nan
    return numerator / denominator
