"""The walk-forward's results: statistics, diagnostics, ``results.json``, ``table.md`` and plots.

Per portfolio and run (the policy: its median seed by overall ARR, as in the paper experiment;
every baseline): ARR, Sortino and Sharpe with circular block-bootstrap 95% intervals over days
(:mod:`backtest.stats`), MDD, turnover and the PSR against 0. For the policy, also:

* the deflated Sharpe ratio of its best seed (the one a researcher would pick), after
  ``trials`` = policies x configurations x seeds of this run + the trials declared before it,
  with ``SR0`` from the variance of the seeds' Sharpe ratios;
* PBO by CSCV over its seeds (and, separately, over its seeds and every baseline as competing
  configurations);
* its edge over 1/N rebalanced and over the trend filter: the difference in ARR and Sharpe of
  the median seed with a paired block-bootstrap interval, and how many seeds beat each;
* per-fold metrics and per-module diagnostics (:mod:`backtest.diagnostics`).
"""

from __future__ import annotations

import json
import math
import pickle
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backtest import stats, timing
from backtest.diagnostics import average_diagnostics, flagged, module_diagnostics
from backtest.experiment import json_ready
from backtest.metrics import compute_metrics, daily_returns
from backtest.plots import plot_fold_bars, plot_timing
from backtest.regime_report import plot_controller, regime_summary
from backtest.report import write_report
from backtest.result import RunResult
from backtest.walkforward import (
    Fold,
    PortfolioRuns,
    WalkForwardRuns,
    WalkForwardSpec,
    seed_matrix,
    seed_units,
    slice_run,
)

EDGE_AGAINST = ("equal_weight", "trend_filter")
RUN_KEYS = ("arr", "sortino", "sharpe", "volatility", "mdd", "turnover")
FOLD_KEYS = ("arr", "sortino", "sharpe", "volatility", "mdd", "turnover")
RUNS_FILE = "runs.pkl"
BLOCK_DAYS = 10
RESAMPLES = 2000
PBO_BLOCKS = 16
NOTHING = pd.Series(dtype=float)
"""A seed's positions for a variant it never noted (left out of that variant's test)."""


def trial_count(runs: WalkForwardRuns, configs: int = 1) -> dict[str, int]:
    """Policies x configurations x runs (seeds, or seed bags) of this run, plus the trials
    declared before it."""
    seeds = len(runs.spec.units)
    here = 1 * configs * seeds
    return {
        "policies": 1,
        "configs": configs,
        "seeds": seeds,
        "this_run": here,
        "prior": runs.spec.prior_trials,
        "total": here + runs.spec.prior_trials,
    }


def conservative_names(runs: WalkForwardRuns) -> tuple[str, ...]:
    """The variants counted as conservative (``[mars].conservative`` of the run's config)."""
    from config.schema import MarsConfig

    return tuple(runs.mars_conservative or MarsConfig().conservative)


def run_stats(run: RunResult, seed: int = 0) -> dict[str, Any]:
    """Metrics of one run with bootstrap intervals and PSR."""
    metrics = compute_metrics(run)
    returns = daily_returns(run).to_numpy()
    row: dict[str, Any] = {k: metrics[k] for k in RUN_KEYS}
    row["fees_share"] = metrics["fees"] / run.initial_cash if run.initial_cash else math.nan
    row["days"] = metrics["days"]
    row["ci"] = {
        name: stats.block_bootstrap_ci(
            returns, fn, block_days=BLOCK_DAYS, resamples=RESAMPLES, seed=seed
        ).to_dict()
        for name, fn in stats.STATISTICS.items()
    }
    moments = stats.sharpe_moments(returns)
    row["psr"] = stats.probabilistic_sharpe_ratio(
        moments.sharpe, 0.0, moments.n, moments.skew, moments.kurtosis
    )
    return row


def median_seed(metrics: dict[int, dict[str, Any]]) -> int:
    """The seed of the median ARR among ``metrics`` (seed -> :func:`compute_metrics`): the lower
    middle one for an even count, ties broken by seed."""
    ranked = sorted(metrics, key=lambda s: (metrics[s]["arr"], s))
    return ranked[(len(ranked) - 1) // 2]


def portfolio_results(runs: WalkForwardRuns, portfolio: PortfolioRuns) -> dict[str, Any]:
    """Everything ``results.json`` holds for one portfolio."""
    policy = portfolio.policy
    metrics = {s: compute_metrics(r) for s, r in policy.items()}
    median = median_seed(metrics)
    rows: dict[str, Any] = {runs.spec.policy: run_stats(policy[median])}
    entry = rows[runs.spec.policy]
    entry["median_seed"] = median
    entry["seeds"] = [{"seed": s, **{k: metrics[s][k] for k in RUN_KEYS}} for s in policy]
    for baseline in portfolio.baselines:
        rows[baseline.name] = run_stats(baseline)

    matrix = seed_matrix(policy)
    trial_sharpes = [stats.sharpe_moments(matrix[:, j]).sharpe for j in range(matrix.shape[1])]
    best = int(max(range(len(trial_sharpes)), key=lambda j: _finite_or(trial_sharpes[j])))
    trials = trial_count(runs)
    dsr = stats.deflated_sharpe_ratio(matrix[:, best], trials["total"], trial_sharpes)
    dsr["selected_seed"] = list(policy)[best]
    entry["dsr"] = dsr
    entry["pbo"] = _pbo(matrix)
    with_baselines = seed_matrix(
        {**policy, **{-i - 1: b for i, b in enumerate(portfolio.baselines)}}
    )
    entry["pbo_with_baselines"] = _pbo(with_baselines)
    entry["edge"] = _edges(policy, median, portfolio.baselines)
    entry["diagnostics"] = _diagnostics(runs, portfolio)
    if any(portfolio.regime.values()):
        conservative = conservative_names(runs)
        entry["regime"] = {
            str(s): regime_summary(portfolio.regime.get(s, []), run, conservative)
            for s, run in policy.items()
        }
    attribution = timing_attribution(runs, portfolio)
    if attribution is not None:
        entry["timing"] = attribution
    folds = _folds(runs, portfolio, median)
    ranking = validation_vs_test(runs, portfolio, folds)
    if ranking is not None:
        entry["validation_vs_test"] = ranking
    return {"coins": list(portfolio.coins), "runs": rows, "folds": folds}


def validation_vs_test(
    runs: WalkForwardRuns, portfolio: PortfolioRuns, folds: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Whether the seeds' validation scores ranked their test folds: per fold, the Spearman
    correlation between each seed's mean validation score over the portfolio's coins (what its
    modules' checkpoints were chosen by) and the seed's ARR in that fold (``folds``, the rows of
    :func:`_folds`), and where the best-validating seed ranked in the fold. None without the
    scores (policies that train no Crypto Module, runs written before they were kept), for
    seed bags, or with fewer than 3 seeds."""
    from scipy.stats import spearmanr

    scores = getattr(runs, "validation", {})  # runs.pkl files written before it have none
    seeds = sorted(portfolio.policy)
    if not scores or runs.spec.bag > 1 or len(seeds) < 3:
        return None
    correlations, ranks = [], []
    for fold, row in zip(runs.folds, folds, strict=True):
        tested = {int(s): arr for s, arr in row[f"{runs.spec.policy}_seeds"].items()}
        validated = [
            statistics.fmean(scores[fold.index, coin, s] for coin in portfolio.coins) for s in seeds
        ]
        arr = [tested[s] for s in seeds]
        with warnings.catch_warnings():  # a constant column gives NaN, said as n/a
            warnings.simplefilter("ignore")
            correlations.append(float(spearmanr(validated, arr).statistic))
        best = seeds[int(np.nanargmax(validated))] if np.isfinite(validated).any() else None
        order = sorted(seeds, key=lambda s: (-tested[s], s))
        ranks.append(None if best is None else order.index(best) + 1)
    finite = [c for c in correlations if math.isfinite(c)]
    return {
        "seeds": len(seeds),
        "spearman": correlations,
        "median": statistics.median(finite) if finite else math.nan,
        "best_validating_rank": ranks,
    }


def timing_attribution(runs: WalkForwardRuns, portfolio: PortfolioRuns) -> dict[str, Any] | None:
    """Per coin and for the portfolio's mean sleeve, the policy's exposure and timing over the
    scored span, over its seeds (:mod:`backtest.timing`; a manager's gross exposure scales the
    decided weights), beside the trend filter's signal on the same closes; for MARS, each
    variant's own positions too (before the controller and the manager). None without module
    decisions (baselines only) or without the closes (``runs.pkl`` files written before they
    were kept)."""
    closes = getattr(runs, "closes", {})
    if not closes or not any(portfolio.decisions.values()):
        return None
    start, end = runs.folds[0].start_ms, runs.folds[-1].end_ms
    timeframe = next(iter(portfolio.policy.values())).timeframe
    per_year, shift = timing.bars_per_year(timeframe), timing.min_shift_bars(timeframe)
    notes = {s: portfolio.regime.get(s, []) for s in portfolio.policy}
    gross = {s: timing.gross_exposure(notes[s]) for s in portfolio.policy}
    mine: dict[str, Any] = {}
    trend: dict[str, Any] = {}
    variants: dict[str, dict[str, Any]] = {}
    coins: dict[str, Any] = {}
    for coin in portfolio.coins:
        returns = timing.next_bar_returns(closes[coin], timeframe)
        decided = [
            timing.scaled_by(
                timing.decision_weights(portfolio.decisions[s], coin, start, end), gross[s]
            )
            for s in portfolio.policy
        ]
        mine[coin] = (decided, returns)
        signal = timing.trend_weights(closes[coin], timeframe, runs.trend_days)
        trend[coin] = ([signal[(signal.index >= start) & (signal.index < end)]], returns)
        coins[coin] = {
            "policy": timing.sleeve_timing(*mine[coin], per_year, shift).to_dict(),
            "trend_filter": timing.sleeve_timing(*trend[coin], per_year, shift).to_dict(),
        }
        held = [timing.variant_positions(notes[s], coin, start, end) for s in portfolio.policy]
        for name in dict.fromkeys(v for seed in held for v in seed):  # seeds kept in order
            variants.setdefault(name, {})[coin] = ([h.get(name, NOTHING) for h in held], returns)
    out: dict[str, Any] = {
        "timeframe": timeframe,
        "bars_per_year": per_year,
        "min_shift_bars": shift,
        "coins": coins,
        "portfolio": {
            "policy": timing.portfolio_timing(mine, per_year, shift).to_dict(),
            "trend_filter": timing.portfolio_timing(trend, per_year, shift).to_dict(),
        },
    }
    if variants:
        out["variants"] = {
            name: timing.portfolio_timing(sleeves, per_year, shift).to_dict()
            for name, sleeves in variants.items()
        }
    return out


def _finite_or(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _pbo(matrix) -> dict[str, Any]:
    try:
        return stats.probability_of_backtest_overfitting(matrix, PBO_BLOCKS).to_dict()
    except ValueError as exc:
        return {"pbo": None, "error": str(exc)}


def _edges(
    policy: dict[int, RunResult], median_seed: int, baselines: Sequence[RunResult]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    named = {b.name: b for b in baselines}
    for name in EDGE_AGAINST:
        if name not in named:
            continue
        other = daily_returns(named[name])
        mine = daily_returns(policy[median_seed])
        days = mine.index.intersection(other.index)
        a, b = mine.loc[days].to_numpy(), other.loc[days].to_numpy()
        base = compute_metrics(named[name])
        out[name] = {
            diff: stats.paired_bootstrap_ci(
                a, b, stats.STATISTICS[diff], block_days=BLOCK_DAYS, resamples=RESAMPLES
            ).to_dict()
            for diff in ("arr", "sharpe")
        }
        out[name]["seeds_beating_arr"] = sum(
            compute_metrics(r)["arr"] > base["arr"] for r in policy.values()
        )
        out[name]["seeds_beating_sharpe"] = sum(
            _finite_or(compute_metrics(r)["sharpe"]) > _finite_or(base["sharpe"])
            for r in policy.values()
        )
        out[name]["seeds"] = len(policy)
    return out


def _diagnostics(runs: WalkForwardRuns, portfolio: PortfolioRuns) -> dict[str, Any]:
    start, end = runs.folds[0].start_ms, runs.folds[-1].end_ms
    per_seed = [
        module_diagnostics(
            portfolio.decisions[s],
            portfolio.policy[s],
            start_ms=start,
            end_ms=end,
            untrained=portfolio.untrained.get(s),
        )
        for s in portfolio.policy
    ]
    return {
        "per_seed": {str(s): d for s, d in zip(portfolio.policy, per_seed, strict=True)},
        "mean": average_diagnostics(per_seed),
        "flagged": {str(s): flagged(d) for s, d in zip(portfolio.policy, per_seed, strict=True)},
    }


def fold_metrics(policy: dict[int, RunResult], fold: Fold) -> dict[int, dict[str, Any]]:
    """Each seed's metrics over ``fold``'s trading span."""
    return {s: compute_metrics(slice_run(r, fold.start_ms, fold.end_ms)) for s, r in policy.items()}


def seeds_median(metrics: dict[int, dict[str, Any]]) -> dict[str, float]:
    """The median over seeds of each of :data:`FOLD_KEYS`."""
    return {k: statistics.median(float(m[k]) for m in metrics.values()) for k in FOLD_KEYS}


def _folds(runs: WalkForwardRuns, portfolio: PortfolioRuns, median_seed: int) -> list[dict]:
    out = []
    for fold in runs.folds:
        cut = fold_metrics(portfolio.policy, fold)
        row: dict[str, Any] = {
            "index": fold.index,
            "span": fold.label,
            "train": [fold.train[0], fold.train[1]],
            "validation": [fold.validation[0], fold.validation[1]],
            runs.spec.policy: seeds_median(cut),
            f"{runs.spec.policy}_seeds": {str(s): m["arr"] for s, m in cut.items()},
        }
        for baseline in portfolio.baselines:
            m = compute_metrics(slice_run(baseline, fold.start_ms, fold.end_ms))
            row[baseline.name] = {k: m[k] for k in FOLD_KEYS}
        out.append(row)
    return out


# --- files --------------------------------------------------------------------------------------


def write_walkforward(runs: WalkForwardRuns, out_dir: Path, *, wall_s: float) -> dict[str, Any]:
    """Write ``results.json``, ``table.md`` and one report folder per portfolio (plots, per-fold
    bars), and keep the runs themselves in ``runs.pkl`` (so the statistics can be recomputed
    without replaying: :func:`rewrite_walkforward`); return the results document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / RUNS_FILE).open("wb") as file:
        pickle.dump({"runs": runs, "wall_s": wall_s}, file)
    spec = runs.spec
    unit = "bag" if spec.bag > 1 else "seed"  # what one run is
    portfolios = {}
    for portfolio in runs.portfolios:
        result = portfolio_results(runs, portfolio)
        portfolios[portfolio.name] = result
        folder = out_dir / f"portfolio_{portfolio.name}"
        median_seed = result["runs"][spec.policy]["median_seed"]
        write_report(
            folder,
            portfolio.policy[median_seed],
            portfolio.baselines,
            title=f"Walk-forward, portfolio {portfolio.name}: {', '.join(portfolio.coins)}",
            notes=[
                f"{spec.policy}: {unit} {median_seed} of {_unit_names(spec)} (median ARR).",
                *runs.notes,
            ],
        )
        if portfolio.regime.get(median_seed):
            plot_controller(
                portfolio.policy[median_seed],
                portfolio.regime[median_seed],
                folder / "controller.png",
                title=f"Portfolio {portfolio.name}: {spec.policy} ({unit} {median_seed}): equity, "
                "controller weights and exposure",
            )
        attribution = result["runs"][spec.policy].get("timing")
        if attribution:
            plot_timing(
                timing_rows(spec.policy, attribution),
                folder / "timing.png",
                title=f"Portfolio {portfolio.name}: does {spec.policy} time its coins? "
                f"(mean over {unit}s; grey: circular shifts of the same positions)",
            )
        names = [spec.policy, *(b.name for b in portfolio.baselines)]
        plot_fold_bars(
            [f["span"] for f in result["folds"]],
            {n: [f[n]["arr"] for f in result["folds"]] for n in names},
            folder / "folds.png",
            title=f"Portfolio {portfolio.name}: return per fold ({spec.policy}: median of {unit}s)",
        )
    document = {
        "policy": spec.policy,
        "spec": {
            "retrain_every_days": spec.retrain_every_days,
            "train_days": spec.train_days,
            "val_days": spec.val_days,
            "seeds": list(spec.seeds),
            "bag": spec.bag,
            "portfolios": list(spec.portfolios),
        },
        "folds": [
            {"index": f.index, "span": f.label, "start_ms": f.start_ms, "end_ms": f.end_ms}
            for f in runs.folds
        ],
        "trials": trial_count(runs),
        "trainings": runs.trainings,
        "training_seconds": runs.training_seconds,
        "backtest_seconds": runs.backtest_seconds,
        "wall_seconds": wall_s,
        "bootstrap": {"block_days": BLOCK_DAYS, "resamples": RESAMPLES, "level": 0.95},
        "notes": runs.notes,
        # runs.pkl files written before the field existed have none
        "runtime": getattr(runs, "runtime", {}),
        "portfolios": portfolios,
    }
    (out_dir / "results.json").write_text(
        json.dumps(json_ready(document), indent=1, allow_nan=False) + "\n"
    )
    (out_dir / "table.md").write_text(walkforward_markdown(document))
    return document


def _ci(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    ci = row["ci"][key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    low, high = ci["low"], ci["high"]
    bounds = "" if low is None or math.isnan(low) else f" [{fmt.format(low)}, {fmt.format(high)}]"
    return fmt.format(value) + bounds


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def seeds_line(policy: str, seeds: list[dict[str, Any]], unit: str = "seed") -> str:
    """Each seed's ARR and MDD, and the spread of their ARRs: how far training noise alone
    moves the policy (one seed's figure is one draw of it). ``unit``: what a run is
    (``"seed"``, or ``"bag"`` for seed bags named by their first seed)."""
    if not seeds:
        return f"- {policy}: no {unit} ran"
    arrs = [s["arr"] for s in seeds if s["arr"] is not None and math.isfinite(s["arr"])]
    each = ", ".join(
        f"{s['seed']}: {_num(s['arr'], '{:+.1%}')} (MDD {_num(s['mdd'], '{:.1%}')})" for s in seeds
    )
    spread = max(arrs) - min(arrs) if arrs else math.nan
    return (
        f"- {policy} by {unit}, ARR: {each}; spread {_num(spread * 100, '{:.1f}')} points between "
        f"{unit}s (training noise: one {unit} is one draw)"
    )


def _runtime_lines(runtime: dict[str, str]) -> list[str]:
    """The runtime line of a table (none when the document has no runtime)."""
    if not runtime:
        return []
    return [
        "",
        f"Ran on {runtime.get('cpu', '?')} ({runtime.get('torch_cpu_capability', '?')} kernels), "
        f"torch {runtime.get('torch', '?')}, numpy {runtime.get('numpy', '?')}, pandas "
        f"{runtime.get('pandas', '?')}. Trainings are not bit-reproducible across CPUs or "
        "library versions: compare runs from one runtime, by their seeds' medians.",
    ]


def _unit_names(spec: WalkForwardSpec) -> str:
    """The runs' seeds, or each bag's seeds."""
    if spec.bag <= 1:
        return str(list(spec.seeds))
    return ", ".join(f"{{{', '.join(map(str, unit))}}}" for unit in spec.units)


def _units(spec: dict[str, Any]) -> str:
    """What one run of the policy is: a seed, or a seed bag (documents written before bags
    existed have no ``bag``)."""
    seeds, bag = spec["seeds"], spec.get("bag", 1)
    if bag <= 1:
        return f"Seeds {seeds}"
    return (
        f"Seed bags of {bag} (each coin's weight the mean of its {bag} modules' positions), "
        "each named by its first seed below: "
        + ", ".join(f"{b[0]} = seeds {', '.join(map(str, b))}" for b in seed_units(seeds, bag))
    )


def walkforward_markdown(document: dict[str, Any]) -> str:
    """The walk-forward table, one block per portfolio, plus the edge and diagnostics lines."""
    policy, trials, spec = document["policy"], document["trials"], document["spec"]
    unit = "bag" if spec.get("bag", 1) > 1 else "seed"  # what one run is
    lines = [
        f"# Walk-forward: {policy}",
        "",
        f"Refit every {spec['retrain_every_days']} days on the {spec['train_days']} training "
        f"days before the last {spec['val_days']} validation days; folds: "
        + ", ".join(f["span"] for f in document["folds"])
        + f". {_units(spec)}; {policy} row = the median {unit} by ARR. 95% circular "
        f"block-bootstrap intervals ({document['bootstrap']['block_days']}-day blocks). "
        f"Trials counted for the DSR: {trials['total']} ({trials['policies']} policy x "
        f"{trials['configs']} config x {trials['seeds']} {unit}s + {trials['prior']} before).",
        "",
        *(f"> {n}" for n in document["notes"]),
        *_runtime_lines(document.get("runtime", {})),
    ]
    for name, result in document["portfolios"].items():
        lines += ["", f"## Portfolio {name}: {', '.join(result['coins'])}", ""]
        lines.append(
            "| run | ARR [95% CI] | Sortino [95% CI] | Sharpe [95% CI] | Vol | MDD | Turnover "
            "| PSR | DSR | PBO |"
        )
        lines.append("| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
        for run, row in result["runs"].items():
            dsr = _num(row["dsr"]["dsr"], "{:.2f}") if "dsr" in row else ""
            pbo = _num(row["pbo"].get("pbo"), "{:.2f}") if "pbo" in row else ""
            lines.append(
                f"| {run} | {_ci(row, 'arr', '{:+.1%}')} | {_ci(row, 'sortino', '{:.2f}')} | "
                f"{_ci(row, 'sharpe', '{:.2f}')} | {_num(row.get('volatility'), '{:.0%}')} | "
                f"{_num(row['mdd'], '{:.1%}')} | "
                f"{_num(row['turnover'], '{:.1f}')} | {_num(row['psr'], '{:.2f}')} | {dsr} | "
                f"{pbo} |"
            )
        entry = result["runs"][policy]
        lines += ["", seeds_line(policy, entry.get("seeds", []), unit)]
        for other, edge in entry.get("edge", {}).items():
            lines.append(
                f"- {policy} minus {other}: ARR {_num(edge['arr']['estimate'], '{:+.1%}')} "
                f"[{_num(edge['arr']['low'], '{:+.1%}')}, {_num(edge['arr']['high'], '{:+.1%}')}]"
                f", Sharpe {_num(edge['sharpe']['estimate'], '{:+.2f}')} "
                f"[{_num(edge['sharpe']['low'], '{:+.2f}')}, "
                f"{_num(edge['sharpe']['high'], '{:+.2f}')}]; {unit}s beating it: ARR "
                f"{edge['seeds_beating_arr']}/{edge['seeds']}, Sharpe "
                f"{edge['seeds_beating_sharpe']}/{edge['seeds']}"
            )
        dsr = entry["dsr"]
        lines.append(
            f"- DSR of the best {unit} ({dsr['selected_seed']}): {_num(dsr['dsr'], '{:.3f}')} "
            f"(SR0 {_num(dsr['sr0'], '{:.4f}')}/day, its SR {_num(dsr['sharpe'], '{:.4f}')}/day, "
            f"skew {_num(dsr['skew'], '{:.2f}')}, raw kurtosis {_num(dsr['kurtosis'], '{:.2f}')}); "
            f"PBO over {unit}s {_num(entry['pbo'].get('pbo'), '{:.2f}')}, over {unit}s and "
            "baselines "
            f"{_num(entry['pbo_with_baselines'].get('pbo'), '{:.2f}')}"
        )
        ranking = entry.get("validation_vs_test")
        if ranking:
            lines.append(
                "- validation vs test: Spearman between the seeds' validation scores and their "
                "ARR, fold by fold: "
                + ", ".join(_num(c, "{:+.2f}") for c in ranking["spearman"])
                + f" (median {_num(ranking['median'], '{:+.2f}')}); the best-validating seed "
                "ranked "
                + ", ".join("n/a" if r is None else str(r) for r in ranking["best_validating_rank"])
                + f" of {ranking['seeds']} on its fold's test"
            )
        diag = entry["diagnostics"]["mean"]
        lines.append(
            f"- modules (mean over {unit}s): "
            + "; ".join(
                f"{coin} in coin {d['coin_share']:.0%}, {d['flips_per_month']:.1f} flips/month, "
                f"turnover {d['turnover']:.1f}x, fees {d['fees_share']:.1%} of capital"
                + (
                    f", flagged in {d['degenerate_seeds']} {unit}(s): {', '.join(d['reasons'])}"
                    if d["degenerate_seeds"]
                    else ""
                )
                for coin, d in diag.items()
            )
        )
        lines += timing_lines(entry.get("timing"), unit)
        if "regime" in entry:
            mine = entry["regime"].get(str(entry["median_seed"])) or {}
            if mine:
                lines.append(
                    f"- controller (seed {entry['median_seed']}): weight on conservative variants "
                    f"({', '.join(mine['conservative'])}) "
                    f"{_num(mine['conservative_weight'], '{:.0%}')} on average, "
                    f"{_num(mine['conservative_weight_in_drawdown'], '{:.0%}')} while "
                    f"more than {mine['drawdown_threshold']:.0%} below the peak, "
                    f"{_num(mine['conservative_weight_otherwise'], '{:.0%}')} otherwise; mean coin "
                    f"exposure {_num(mine['mean_coin_exposure'], '{:.0%}')}, mean gross exposure "
                    f"{_num(mine['mean_gross_exposure'], '{:.0%}')}"
                )
        lines += ["", f"Per fold (ARR; {policy} = median of {unit}s):", ""]
        names = list(result["runs"])
        lines.append("| fold | " + " | ".join(names) + " |")
        lines.append("| :-- | " + " | ".join("--:" for _ in names) + " |")
        for fold in result["folds"]:
            lines.append(
                f"| {fold['span']} | "
                + " | ".join(_num(fold[n]["arr"], "{:+.1%}") for n in names)
                + " |"
            )
    return "\n".join(lines) + "\n"


def timing_rows(policy: str, attribution: dict[str, Any]) -> list[tuple[str, dict]]:
    """The rows of ``timing.png``: the mean sleeve and each coin, the policy's and the trend
    filter's, then each MARS variant whose positions move."""
    rows = []
    for name, row in (("mean sleeve", attribution["portfolio"]), *attribution["coins"].items()):
        rows += [
            (f"{name}: {policy}", row["policy"]),
            (f"{name}: trend filter", row["trend_filter"]),
        ]
    rows += [
        (f"variant {name}", row)
        for name, row in (attribution.get("variants") or {}).items()
        if row["p_value"] is not None
    ]
    return rows


def timing_lines(attribution: dict[str, Any] | None, unit: str) -> list[str]:
    """The timing attribution's lines of ``table.md`` (none without one)."""
    if not attribution:
        return []

    def sleeve(name: str, row: dict[str, Any]) -> str:
        mine, trend = row["policy"], row["trend_filter"]
        if not mine["decisions"]:
            return f"{name}: no decisions to attribute"
        return (
            f"{name} held {_num(mine['held'], '{:+.0%}')}; in {_num(mine['mean_weight'], '{:.0%}')}"
            f": exposure {_num(mine['exposure'], '{:+.0%}')}, timing "
            f"{_num(mine['timing'], '{:+.1%}')} (p {_num(mine['p_value'], '{:.3f}')}, "
            f"{round(mine['seeds_positive'] * mine['seeds'])}/{mine['seeds']} {unit}s > 0); "
            f"trend filter in {_num(trend['mean_weight'], '{:.0%}')}, timing "
            f"{_num(trend['timing'], '{:+.1%}')} (p {_num(trend['p_value'], '{:.3f}')})"
        )

    return [
        f"- timing, per year before costs (mean of {attribution.get('timeframe', '6h')} returns x "
        f"{attribution['bars_per_year']:.0f}; p: one-sided, against every circular shift of the "
        f"positions at least {attribution['min_shift_bars']} bars from 0): "
        + sleeve("mean sleeve", attribution["portfolio"]),
        *(f"  - {sleeve(coin, row)}" for coin, row in attribution["coins"].items()),
        *(
            [
                "  - variants' own positions (mean sleeve, before the controller and manager): "
                + "; ".join(
                    f"{name} in {_num(v['mean_weight'], '{:.0%}')}, timing "
                    f"{_num(v['timing'], '{:+.1%}')} (p {_num(v['p_value'], '{:.3f}')})"
                    for name, v in attribution["variants"].items()
                )
            ]
            if attribution.get("variants")
            else []
        ),
    ]


def load_walkforward(out_dir: Path) -> tuple[WalkForwardRuns, float]:
    """The runs of a finished walk-forward and its wall time, from its ``runs.pkl`` (a file this
    code wrote: unpickling runs code, so only read your own)."""
    with (Path(out_dir) / RUNS_FILE).open("rb") as file:
        saved = pickle.load(file)
    return saved["runs"], saved["wall_s"]


def rewrite_walkforward(out_dir: Path) -> dict[str, Any]:
    """Recompute ``results.json``, ``table.md`` and the reports of a finished walk-forward from
    its ``runs.pkl`` (:func:`load_walkforward`)."""
    runs, wall_s = load_walkforward(out_dir)
    return write_walkforward(runs, out_dir, wall_s=wall_s)
