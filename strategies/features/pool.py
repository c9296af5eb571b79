"""The candidate pool: which metrics may be selected as a coin's features.

A coin's pool is its own metrics plus *market-wide* candidates: the metrics of a few assets that
are offered to every coin (Bitcoin's network metrics on real data, the ``MARKET`` series of the
synthetic market). Real data makes this necessary: ``../shared/data`` has no on-chain series for
STORJ or BLZ at all, and LINK's stop early, so without market-wide candidates those coins would
get no features.

Metrics are named by a *qualified id* ``"ASSET:name"`` (``"BTC:blockchain_com.hash_rate"``), so
that BTC's hash rate offered to LINK and LINK's own metrics can never be confused. The pool is a
plain sorted list: own metrics first, then each market-wide asset in the order given, so that
the same inputs always give the same pool (ties in the selection are broken by id, and a stable
pool keeps that deterministic).

An empty pool is a normal outcome (a coin with no own metrics and no market-wide assets); the
selection then keeps nothing and the feature function yields zero-width features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

ID_SEPARATOR = ":"


def qualified_id(asset: str, name: str) -> str:
    """The id ``"ASSET:name"`` of metric ``name`` of ``asset``."""
    if ID_SEPARATOR in asset:
        raise ValueError(f"asset {asset!r} must not contain {ID_SEPARATOR!r}")
    return f"{asset}{ID_SEPARATOR}{name}"


def split_id(metric_id: str) -> tuple[str, str]:
    """``(asset, name)`` of a qualified id; the inverse of :func:`qualified_id`."""
    asset, sep, name = metric_id.partition(ID_SEPARATOR)
    if not sep or not asset or not name:
        raise ValueError(f"{metric_id!r} is not a qualified metric id 'ASSET:name'")
    return asset, name


def available_metrics(metrics_long: pd.DataFrame) -> dict[str, list[str]]:
    """Metric names present per asset in a long metric frame (``asset``, ``name``, ...), sorted."""
    if metrics_long.empty:
        return {}
    pairs = metrics_long[["asset", "name"]].drop_duplicates()
    result: dict[str, list[str]] = {}
    for asset, name in sorted(pairs.itertuples(index=False, name=None)):
        result.setdefault(str(asset), []).append(str(name))
    return result


def candidate_pool(
    coin: str,
    available: Mapping[str, Sequence[str]],
    *,
    market_wide_assets: Sequence[str] = (),
) -> list[str]:
    """Qualified ids of the metrics a coin's selection may choose from.

    ``available`` maps an asset to the names of its stored metrics. The pool is the coin's own
    metrics (sorted), then the metrics of each asset in ``market_wide_assets`` (in that order,
    names sorted). A market-wide asset equal to ``coin`` adds nothing new (BTC's own metrics are
    not listed twice for BTC), and an asset missing from ``available`` adds nothing. The result
    may be empty.
    """
    pool: list[str] = []
    seen: set[str] = set()
    for asset in (coin, *market_wide_assets):
        for name in sorted(available.get(asset, ())):
            metric_id = qualified_id(asset, name)
            if metric_id not in seen:
                seen.add(metric_id)
                pool.append(metric_id)
    return pool
