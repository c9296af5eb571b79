"""Two finished walk-forwards side by side, paired seed by seed: an ablation's verdict.

``cryptorlpm experiment compare A B`` reads the ``runs.pkl`` of two walk-forwards over the same
folds, portfolios and seeds (for example ``mars`` and the same ensembles with the controller held
at the uniform mix, run with one ``--models-dir``) and gives, per portfolio:

- each run's median seed (by ARR) with its ARR, Sortino, maximum drawdown and turnover, the
  median over seeds of each seed's drawdown, and the median over folds of the seeds' median
  Sortino and drawdown per fold;
- per seed, the differences ``A - B`` of ARR, Sortino, drawdown and turnover, and how many seeds
  favour A (higher ARR and Sortino, lower drawdown and turnover).

Seed ``s`` of A and seed ``s`` of B share their data, folds and seed, so a paired difference
removes much of what the seeds share. A run of seed bags (``--bag B``) pairs with another of the
same bags, bag by bag, or with a run of single seeds over the same seeds: each bag against the
median of its own ``B`` seeds' figures (the same networks, alone). Two runs from different
runtimes (CPU kernels, library versions: ``results.json``'s ``runtime``) hold networks trained
apart, and the comparison says so.
Neither run is a baseline: compare a policy with its baselines in its own ``table.md``.
"""

from __future__ import annotations

import pickle
import statistics
from pathlib import Path
from typing import Any

from backtest.metrics import compute_metrics
from backtest.result import RunResult
from backtest.walkforward import Fold, WalkForwardRuns
from backtest.wf_report import (
    RUNS_FILE,
    fold_metrics,
    load_walkforward,
    median_seed,
    seeds_median,
)

PAIRED = ("arr", "sortino", "mdd", "turnover")
HIGHER_IS_BETTER = {"arr": True, "sortino": True, "mdd": False, "turnover": False}


class ComparisonError(ValueError):
    """Two walk-forwards that cannot be paired (or a folder that holds none)."""


def read_walkforward(out_dir: Path) -> WalkForwardRuns:
    """The runs of a finished walk-forward's output folder (``--out``), or
    :class:`ComparisonError` when it holds none."""
    path = Path(out_dir) / RUNS_FILE
    if not path.is_file():
        raise ComparisonError(
            f"{out_dir}: no {RUNS_FILE}: expected the --out folder of a finished walk-forward"
        )
    try:
        runs = load_walkforward(out_dir)[0]
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        KeyError,
        TypeError,
    ) as exc:
        raise ComparisonError(
            f"{path}: not readable as a walk-forward's runs ({type(exc).__name__}: {exc}); "
            "written by another version of this code?"
        ) from exc
    if not isinstance(runs, WalkForwardRuns):
        raise ComparisonError(f"{path}: holds no walk-forward runs")
    return runs


def compare_walkforwards(
    first: WalkForwardRuns, second: WalkForwardRuns, labels: tuple[str, str] = ("A", "B")
) -> dict[str, Any]:
    """The paired comparison of ``first`` (A) and ``second`` (B) (module docstring), as a
    JSON-ready document; :class:`ComparisonError` when their folds, portfolios or seeds differ."""
    _check_pairable(first, second, labels)
    runtimes = [getattr(first, "runtime", {}), getattr(second, "runtime", {})]
    units = max(first.spec, second.spec, key=lambda spec: spec.bag).units
    seeds = [unit[0] for unit in units]
    bagged = [runs.spec.bag > 1 for runs in (first, second)]
    portfolios = {}
    for a, b in zip(first.portfolios, second.portfolios, strict=True):
        metrics = [{s: compute_metrics(r) for s, r in runs.policy.items()} for runs in (a, b)]
        runs_metrics = list(zip(metrics, bagged, strict=True))
        values = {
            key: [[_unit_value(m, u, key, bag) for u in units] for m, bag in runs_metrics]
            for key in PAIRED
        }
        paired = {key: [x - y for x, y in zip(*values[key], strict=True)] for key in PAIRED}
        portfolios[a.name] = {
            "seeds": seeds,
            "runs": {
                label: _summary(runs.policy, seed_metrics, first.folds)
                for label, runs, seed_metrics in zip(labels, (a, b), metrics, strict=True)
            },
            "paired": paired,
            "favour_first": {
                key: sum((d > 0) if HIGHER_IS_BETTER[key] else (d < 0) for d in paired[key])
                for key in PAIRED
            },
        }
    return {
        "labels": list(labels),
        "policies": [first.spec.policy, second.spec.policy],
        "folds": [f.label for f in first.folds],
        "runtimes": runtimes,
        "same_runtime": runtimes[0] == runtimes[1] and bool(runtimes[0]),
        "bags": [first.spec.bag, second.spec.bag],
        "portfolios": portfolios,
    }


def _unit_value(
    metrics: dict[int, dict[str, Any]], unit: tuple[int, ...], key: str, bagged: bool
) -> float:
    """A run's figure for one unit of the pairing: a bag's own (a bag run keys it by its first
    seed), else the median over the unit's seeds (a single seed: its own)."""
    if bagged:
        return float(metrics[unit[0]][key])
    return float(statistics.median(float(metrics[s][key]) for s in unit))


def _check_pairable(
    first: WalkForwardRuns, second: WalkForwardRuns, labels: tuple[str, str]
) -> None:
    a, b = labels
    spans = [[(f.start_ms, f.end_ms) for f in runs.folds] for runs in (first, second)]
    if spans[0] != spans[1]:
        raise ComparisonError(
            f"{a} and {b} trade different folds: {[f.label for f in first.folds]} against "
            f"{[f.label for f in second.folds]}"
        )
    bags = [runs.spec.bag for runs in (first, second)]
    if min(bags) > 1 and bags[0] != bags[1]:
        raise ComparisonError(
            f"{a} and {b} pair different runs: seed bags of {bags[0]} against {bags[1]}"
        )
    if bags[0] != bags[1] and first.spec.seeds != second.spec.seeds:
        raise ComparisonError(
            f"{a} and {b} ran different seeds: {list(first.spec.seeds)} against "
            f"{list(second.spec.seeds)} (a bag pairs with its own seeds run alone)"
        )
    names = [[p.name for p in runs.portfolios] for runs in (first, second)]
    if names[0] != names[1]:
        raise ComparisonError(
            f"{a} and {b} hold different portfolios: {names[0]} against {names[1]}"
        )
    if bags[0] != bags[1]:
        return  # a bag run against its seeds alone: the runs are the specs' (checked above)
    for p, q in zip(first.portfolios, second.portfolios, strict=True):
        if sorted(p.policy) != sorted(q.policy):
            raise ComparisonError(
                f"portfolio {p.name}: {a} and {b} ran different seeds: {sorted(p.policy)} against "
                f"{sorted(q.policy)}"
            )


def _summary(
    runs: dict[int, RunResult], metrics: dict[int, dict[str, Any]], folds: list[Fold]
) -> dict[str, Any]:
    seed = median_seed(metrics)
    per_fold = [seeds_median(fold_metrics(runs, f)) for f in folds]
    return {
        "median_seed": seed,
        **{key: float(metrics[seed][key]) for key in PAIRED},
        "seeds_mdd": statistics.median(float(m["mdd"]) for m in metrics.values()),
        "fold_sortino": statistics.median(m["sortino"] for m in per_fold),
        "fold_mdd": statistics.median(m["mdd"] for m in per_fold),
    }


def comparison_markdown(document: dict[str, Any]) -> str:
    """The comparison as tables: the two runs per portfolio, then the paired seeds."""
    a, b = document["labels"]
    lines = [
        f"# {a} ({document['policies'][0]}) against {b} ({document['policies'][1]})",
        "",
        f"Folds: {', '.join(document['folds'])}. Median seed by ARR; fold figures are the median "
        "over folds of the seeds' median per fold; paired rows are seed by seed, A - B.",
    ]
    bags = document.get("bags", [1, 1])
    if bags[0] != bags[1]:
        bagged, alone = (a, b) if bags[0] > 1 else (b, a)
        lines += [
            "",
            f"> {bagged}'s runs are seed bags of {max(bags)} seeds, named by their first seed; "
            f"{alone}'s are the same seeds alone. A paired row holds each bag against the median "
            f"of its own seeds' figures in {alone}.",
        ]
    elif bags[0] > 1:
        lines += [
            "",
            f"> Each run is a seed bag of {bags[0]} seeds, named by its first seed: read every "
            "seed below as a bag.",
        ]
    if not document["same_runtime"]:
        lines += [
            "",
            "> The runs come from different runtimes (or do not record theirs): their networks "
            "were trained apart, so the pairs also differ by training noise.",
        ]
    for name, entry in document["portfolios"].items():
        lines += [
            "",
            f"## Portfolio {name}",
            "",
            "| run | median seed | ARR | Sortino | MDD | turnover | seeds' MDD | fold Sortino "
            "| fold MDD |",
            "| :-- | --: | --: | --: | --: | --: | --: | --: | --: |",
        ]
        for label, row in entry["runs"].items():
            lines.append(
                f"| {label} | {row['median_seed']} | {row['arr']:+.1%} | {row['sortino']:.2f} | "
                f"{row['mdd']:.1%} | {row['turnover']:.1f} | {row['seeds_mdd']:.1%} | "
                f"{row['fold_sortino']:.3f} | {row['fold_mdd']:.1%} |"
            )
        seeds = entry["seeds"]
        lines += [
            "",
            f"| A - B, seed by seed ({', '.join(map(str, seeds))}) | differences | seeds "
            "favouring A |",
            "| :-- | :-- | --: |",
        ]
        for key in PAIRED:
            diffs = " ".join(f"{d:+.3f}" for d in entry["paired"][key])
            lines.append(f"| {key} | {diffs} | {entry['favour_first'][key]}/{len(seeds)} |")
    return "\n".join(lines) + "\n"
