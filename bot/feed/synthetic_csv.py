"""The synthetic market written as a folder laid out like ``../shared/data``.

``ohlcv/{COIN}_{QUOTE}-1h.csv`` with ccxt's columns (``timestamp`` = the candle's open time),
``onchain/{COIN}_synthetic.csv`` with one row per UTC day (``date``, the day the values describe)
and one column per metric of the coin (its leading and its noise metrics; the market-wide
``MARKET`` metrics are not written: the walk-forward's config offers BTC's as market-wide), and
``planted.json``:
per coin, the names of the metrics that lead its returns (the ground truth that real data never
gives). ``cryptorlpm experiment walkforward --data-dir`` and ``experiment probe --planted`` read
it, so the walk-forward can be run where the answer is known: a positive control.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bot.feed.csv_import import metric_name
from bot.feed.synthetic import SyntheticMarket

SOURCE = "synthetic"
"""The on-chain files' source name (imported metric names are prefixed with it)."""


def write_csv_dir(market: SyntheticMarket, root: Path, quote: str = "USDT") -> list[Path]:
    """Write ``market`` under ``root`` (see the module docstring); the files written."""
    root = Path(root)
    (root / "ohlcv").mkdir(parents=True, exist_ok=True)
    (root / "onchain").mkdir(exist_ok=True)
    written = []
    for coin, frame in market.candles.items():
        path = root / "ohlcv" / f"{coin}_{quote}-1h.csv"
        frame.rename(columns={"open_time": "timestamp"}).to_csv(path, index=False)
        written.append(path)
        mine = market.metrics[market.metrics["asset"] == coin]
        if mine.empty:
            continue
        wide = mine.pivot(index="observed_at", columns="name", values="value")
        wide.index = pd.to_datetime(wide.index, unit="ms", utc=True).strftime("%Y-%m-%d")
        wide.index.name = "date"
        path = root / "onchain" / f"{coin}_{SOURCE}.csv"
        wide.to_csv(path)
        written.append(path)
    path = root / "planted.json"
    planted = {coin: list(names) for coin, names in market.planted.items()}
    path.write_text(json.dumps({"source": SOURCE, "planted": planted}, indent=1) + "\n")
    return [*written, path]


def read_planted(path: Path) -> dict[str, tuple[str, ...]]:
    """Per coin, the imported names (``synthetic.<name>``) of its planted metrics, from a
    ``planted.json`` that :func:`write_csv_dir` wrote; ``ValueError`` naming the file otherwise."""
    try:
        document = json.loads(Path(path).read_text())
        source, planted = document["source"], document["planted"]
        return {
            str(c): tuple(metric_name(source, n) for n in names) for c, names in planted.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a planted.json written by `cryptorlpm data export-synth` ({exc})"
        ) from exc
