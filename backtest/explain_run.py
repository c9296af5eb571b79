"""``cryptorlpm explain``: the explained decisions of a backtest run or of a live state dir.

Two sources, one answer (a list of :class:`ExplainedDecision` per coin):

* a **live state dir** (``state.db``): the explanations the daemon journalled after each cycle
  (``decisions.explanation``, the vote's ``explain(ts)``), read back as they were;
* a **backtest run** (the folder ``cryptorlpm demo --out`` writes: ``models/<coin>/<id>/`` and
  ``report/``): the modules of the seed the report shows (``report/seeds.json``), their states
  rebuilt from the stores named by the config, replayed over the test window their cards name,
  with the positions the run held (``report/weights.csv``), and explained now
  (:func:`strategies.explain_replay.explain_bars`).

Bad input ends in :class:`ExplainError` with one line naming the folder, coin or time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bot.timeframes import ms_to_iso
from config.schema import AppConfig


class ExplainError(ValueError):
    """A request ``cryptorlpm explain`` cannot answer (message shown as is)."""


@dataclass(frozen=True)
class ExplainedDecision:
    """One decision of one coin's module and its inputs, largest ``|attribution|`` first."""

    ts: int
    coin: str
    action: str
    q: dict[str, float]
    inputs: tuple[tuple[str, float], ...]


def attribution_rows(decisions: list[ExplainedDecision]) -> pd.DataFrame:
    """``ts, coin, action, input, attribution`` (what the attribution plot draws)."""
    rows = [(d.ts, d.coin, d.action, n, v) for d in decisions for n, v in d.inputs]
    return pd.DataFrame(rows, columns=["ts", "coin", "action", "input", "attribution"])


def _select(
    found: dict[str, list[ExplainedDecision]],
    coin: str | None,
    at_ms: int | None,
    start_ms: int | None,
    end_ms: int | None,
    where: str,
) -> dict[str, list[ExplainedDecision]]:
    """The coins and times asked for, with one-line errors for what is not there."""
    if coin is not None:
        if coin not in found:
            known = ", ".join(sorted(found)) or "none"
            raise ExplainError(
                f"--coin {coin}: no explained decisions of it in {where} (coins: {known})"
            )
        found = {coin: found[coin]}
    times = sorted({d.ts for rows in found.values() for d in rows})
    if not times:
        raise ExplainError(f"{where}: no explained decisions")
    span = f"decisions from {ms_to_iso(times[0])} to {ms_to_iso(times[-1])}"
    out: dict[str, list[ExplainedDecision]] = {}
    if at_ms is not None:
        if not times[0] <= at_ms <= times[-1] + _gap(times):
            raise ExplainError(f"--at {ms_to_iso(at_ms)}: outside the run ({span})")
        for c, rows in found.items():
            before = [d for d in rows if d.ts <= at_ms]
            if before:
                out[c] = [before[-1]]
        return out
    lo = times[0] if start_ms is None else start_ms
    hi = times[-1] if end_ms is None else end_ms
    if lo > hi:
        raise ExplainError(f"--from {ms_to_iso(lo)} is after --to {ms_to_iso(hi)}")
    for c, rows in found.items():
        inside = [d for d in rows if lo <= d.ts <= hi]
        if inside:
            out[c] = inside
    if not out:
        raise ExplainError(f"{ms_to_iso(lo)} .. {ms_to_iso(hi)}: outside the run ({span})")
    return out


def _gap(times: list[int]) -> int:
    """One decision interval (a time just after the last decision still asks for it)."""
    return int(np.median(np.diff(times))) if len(times) > 1 else 0


async def explain_state_dir(
    folder: Path,
    coin: str | None,
    at_ms: int | None,
    start_ms: int | None,
    end_ms: int | None,
) -> dict[str, list[ExplainedDecision]]:
    """The explanations the daemon journalled in ``folder/state.db``."""
    from bot.store.journal import Journal

    db = folder / "state.db" if folder.is_dir() else folder
    async with await Journal.open(db) as journal:
        rows = await journal.explanations()
    found: dict[str, list[ExplainedDecision]] = {}
    for ts, explanation in rows:
        for key, entry in explanation.items():
            if isinstance(entry, dict) and "action" in entry and "top" in entry:
                found.setdefault(key, []).append(
                    ExplainedDecision(
                        ts,
                        key,
                        str(entry["action"]),
                        {str(a): float(v) for a, v in (entry.get("q") or {}).items()},
                        tuple((str(n), float(v)) for n, v in entry["top"]),
                    )
                )
    return _select(found, coin, at_ms, start_ms, end_ms, str(db))


def _run_models(run_dir: Path) -> dict[str, Path]:
    """Each coin's model folder of the seed the run's report shows."""
    from strategies.registry import CARD

    cards = sorted((run_dir / "models").glob(f"*/*/{CARD}"))
    if not cards:
        raise ExplainError(f"{run_dir}: no models/<coin>/<id>/{CARD} (not a backtest run folder)")
    seed = None
    seeds_json = run_dir / "report" / "seeds.json"
    if seeds_json.exists():
        seed = json.loads(seeds_json.read_text()).get("median_seed")
    folders: dict[str, Path] = {}
    for card in cards:
        coin, folder = card.parent.parent.name, card.parent
        if seed is None or json.loads(card.read_text()).get("seed") == seed:
            folders.setdefault(coin, folder)
    return folders


async def explain_backtest_run(
    cfg: AppConfig,
    run_dir: Path,
    coin: str | None,
    at_ms: int | None,
    start_ms: int | None,
    end_ms: int | None,
    *,
    limit: int = 300,
) -> dict[str, list[ExplainedDecision]]:
    """Explain the decisions of a backtest run folder (module docstring); a range is
    explained at most ``limit`` evenly spaced decisions per coin."""
    from backtest.pipeline import replay_driver
    from bot.store import MarketStore, MetricStore
    from strategies.explain_replay import evenly_spaced, explain_bars
    from strategies.registry import load_crypto_module, read_card

    folders = _run_models(run_dir)
    if coin is not None and coin not in folders:
        known = ", ".join(sorted(folders))
        raise ExplainError(
            f"--coin {coin}: the run in {run_dir} has no module for it (coins: {known})"
        )
    coins = [coin] if coin is not None else sorted(folders)
    windows = read_card(folders[coins[0]]).get("windows") or {}
    test = (windows.get("test") or {}) if isinstance(windows, dict) else {}
    first = cfg.windows.test if not test else type(cfg.windows.test).model_validate(test)
    run_start, run_end = first.start_ms, first.end_ms
    weights_csv = run_dir / "report" / "weights.csv"
    weights = pd.read_csv(weights_csv).set_index("ts") if weights_csv.exists() else None
    for path in (cfg.data.market_path, cfg.data.metrics_path):
        if not Path(path).exists():
            raise ExplainError(f"{path}: no such store (the run's data; give its config with -c)")
    market = await MarketStore.open(cfg.data.market_path)
    metrics = await MetricStore.open(cfg.data.metrics_path)
    try:
        driver = await replay_driver(cfg, market, metrics, coins, run_start, run_end)
    finally:
        await metrics.close()
        await market.close()
    replayed = driver.replayed_metrics()
    step = driver.step_ms
    found: dict[str, list[ExplainedDecision]] = {}
    for c in coins:
        open_time, ohlcv = driver.replayed_bars(cfg.market.symbol(c))
        close = open_time + step
        deciding = close[(close >= run_start) & (close < run_end)].tolist()
        if not deciding:
            continue
        if at_ms is not None:
            if not deciding[0] <= at_ms <= deciding[-1] + step:
                span = f"decisions from {ms_to_iso(deciding[0])} to {ms_to_iso(deciding[-1])}"
                raise ExplainError(f"--at {ms_to_iso(at_ms)}: outside the run ({span})")
            wanted = [max(t for t in deciding if t <= at_ms)]
        else:
            lo = deciding[0] if start_ms is None else start_ms
            hi = deciding[-1] if end_ms is None else end_ms
            wanted = evenly_spaced([t for t in deciding if lo <= t <= hi], limit)
            if not wanted:
                span = f"decisions from {ms_to_iso(deciding[0])} to {ms_to_iso(deciding[-1])}"
                raise ExplainError(f"{ms_to_iso(lo)} .. {ms_to_iso(hi)}: outside the run ({span})")
        positions = np.zeros(len(close), dtype=np.float32)
        if weights is not None and c in weights:
            held = weights[c].reindex(close).fillna(0.0).to_numpy()
            positions = (held * len(folders) >= 0.5).astype(np.float32)
        model = load_crypto_module(folders[c])
        explained = explain_bars(
            model, driver.timeframe, open_time, ohlcv, replayed, positions, wanted
        )
        found[c] = [ExplainedDecision(e.ts, c, e.action, e.sam.q, e.sam.inputs) for e in explained]
    if not found:
        period = f"{ms_to_iso(run_start)} .. {ms_to_iso(run_end)}"
        raise ExplainError(
            f"{run_dir}: the modules of {', '.join(coins)} took no decision from their "
            f"networks in {period} (window not full or DRU not ready)"
        )
    return found
