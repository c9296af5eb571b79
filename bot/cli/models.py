"""``cryptorlpm train`` and ``cryptorlpm models ...``: training Crypto Modules and the registry."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bot.cli.common import (
    ConfigOption,
    console,
    fail,
    id_column,
    load,
    print_table,
    require_stores,
)

app = typer.Typer(help="The registry of trained Crypto Modules.", no_args_is_help=True)


def train(
    coin: Annotated[str, typer.Option("--coin", help="coin ticker, e.g. BTC (or BTC/USDT)")],
    config: ConfigOption = None,
    seed: Annotated[
        int | None, typer.Option(help="one seed (default: every seed of [training].seeds)")
    ] = None,
    mars: Annotated[
        bool,
        typer.Option(
            "--mars",
            help="train the coin's MARS ensembles ([mars]; every seed in one batched network) "
            "into <models_dir>/mars instead of a Crypto Module",
        ),
    ] = False,
) -> None:
    """Train a coin's Crypto Module (DRU + EAM + SAM) on [windows] and save it to the registry
    (with --mars: its MARS ensembles, for [live].policy = "mars" or "mars+manager")."""
    from strategies.agents.train import train_crypto_module
    from strategies.features.inputs import MissingDataError

    cfg = load(config)
    coin = coin.upper().split("/")[0]
    if coin not in cfg.market.coins:
        fail(f"--coin {coin}: not one of the configured coins {list(cfg.market.coins)}")
    require_stores(cfg)
    try:
        if mars:
            from strategies.mars.live import train_mars

            folders = train_mars(cfg, coin, seed)
        else:
            folders = train_crypto_module(cfg, coin, seed)
    except MissingDataError as exc:
        fail(str(exc))
        return
    for folder in folders:
        console.print(f"saved {folder}")


@app.command("list")
def list_(config: ConfigOption = None) -> None:
    """Every trained Crypto Module: coin, id, seed, validation scores."""
    from strategies import versions
    from strategies.registry import list_models

    cfg = load(config)
    root = cfg.training.models_dir
    models = list_models(root)
    if not models:
        console.print(f"no models in {root} (train one: cryptorlpm train)")
        return
    active = {}
    for coin in {m.coin for m in models}:
        try:
            active[coin] = versions.active_model(root, coin)
        except versions.VersionError:
            active[coin] = None  # `models history COIN` says what is wrong
    ids = [m.id + (" *" if active[m.coin] == m.id else "") for m in models]
    table = Table(
        "coin",
        id_column("id", ids),
        "tf",
        "seed",
        "created",
        "val SAM",
        "val B&H",
        title=f"Crypto Modules in {root} (* active)",
    )
    for m, shown in zip(models, ids, strict=True):
        table.add_row(
            m.coin,
            shown,
            m.timeframe,
            str(m.seed),
            m.created_at[:19],
            f"{m.validation_sam:+.4f}",
            f"{m.validation_buy_and_hold:+.4f}",
        )
    print_table(table)


@app.command("show")
def show(
    model_id: Annotated[str, typer.Argument(help="model id, as listed by `models list`")],
    config: ConfigOption = None,
) -> None:
    """The model card: hyperparameters, selected metrics, data ranges, scores, versions."""
    from strategies.registry import show_model

    cfg = load(config)
    try:
        card = show_model(cfg.training.models_dir, model_id)
    except (FileNotFoundError, LookupError) as exc:
        fail(str(exc))
        return
    console.print_json(json.dumps(card, default=str))


def _coin(coin: str) -> str:
    return coin.upper().split("/")[0]


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


@app.command("history")
def history(
    coin: Annotated[str, typer.Argument(help="coin ticker, e.g. BTC")],
    config: ConfigOption = None,
) -> None:
    """A coin's version history: every activation (initial, retrain, rollback, manual) with
    its validation scores, the active model, and the last retrainings."""
    from strategies import versions

    cfg = load(config)
    coin, root = _coin(coin), cfg.training.models_dir
    try:
        entries = versions.history(root, coin)
        active = versions.active_model(root, coin)
        attempts = versions.retrains(root, coin)
    except (OSError, LookupError, ValueError) as exc:
        fail(str(exc))
        return
    if active is None:
        fail(f"{coin}: no models in {root / coin} (train one: cryptorlpm train --coin {coin})")
    if not entries:
        console.print(f"{coin}: no version history yet; the active model is the newest: {active}")
    else:
        table = Table(
            "#",
            "activated at",
            id_column("model id", (e.model_id + " (active)" for e in entries)),
            "reason",
            "val score",
            "replaced score",
            title=f"{coin} versions in {root}",
        )
        for number, entry in enumerate(entries, 1):
            marker = " (active)" if number == len(entries) else ""
            table.add_row(
                str(number),
                entry.activated_at,
                entry.model_id + marker,
                entry.reason,
                _score(entry.validation_score),
                _score(entry.incumbent_score),
            )
        print_table(table)
        console.print(f"active: {active}")
    if attempts:
        table = Table(
            "at",
            id_column("candidate", (str(a.outcome.get("candidate_id") or "") for a in attempts)),
            "outcome",
            title=f"{coin} retrainings (newest last)",
        )
        for attempt in attempts[-10:]:
            outcome = attempt.outcome
            table.add_row(attempt.at, str(outcome.get("candidate_id") or ""), outcome["reason"])
        print_table(table)


@app.command("activate")
def activate(
    model_id: Annotated[str, typer.Argument(help="model id, as listed by `models list`")],
    config: ConfigOption = None,
) -> None:
    """Make a model its coin's active one (recorded as a manual activation)."""
    import time

    from strategies import versions

    cfg = load(config)
    root = cfg.training.models_dir
    try:
        coin = versions.coin_of(root, model_id)
        before = versions.active_model(root, coin)
        versions.activate(root, coin, model_id, reason="manual", at_ms=time.time_ns() // 10**6)
    except (OSError, LookupError, ValueError) as exc:
        fail(str(exc))
        return
    if before == model_id:
        console.print(f"{coin}: {model_id} is already the active model")
    else:
        console.print(f"{coin}: active model is now {model_id} (was {before})")


@app.command("rollback")
def rollback(
    coin: Annotated[str, typer.Argument(help="coin ticker, e.g. BTC")],
    config: ConfigOption = None,
) -> None:
    """Re-activate the model that was active before the current one (again: one more back)."""
    import time

    from strategies import versions

    cfg = load(config)
    coin, root = _coin(coin), cfg.training.models_dir
    try:
        before = versions.active_model(root, coin)
        after = versions.rollback(root, coin, at_ms=time.time_ns() // 10**6)
    except (OSError, LookupError, ValueError) as exc:
        fail(str(exc))
        return
    console.print(f"{coin}: rolled back from {before} to {after}")
