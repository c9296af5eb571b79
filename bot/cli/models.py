"""``cryptorlpm train`` and ``cryptorlpm models ...``: training Crypto Modules and the registry."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bot.cli.common import ConfigOption, console, fail, load

app = typer.Typer(help="The registry of trained Crypto Modules.", no_args_is_help=True)


def train(
    coin: Annotated[str, typer.Option("--coin", help="coin ticker, e.g. BTC (or BTC/USDT)")],
    config: ConfigOption = None,
    seed: Annotated[
        int | None, typer.Option(help="one seed (default: every seed of [training].seeds)")
    ] = None,
) -> None:
    """Train a coin's Crypto Module (DRU + EAM + SAM) on [windows] and save it to the registry."""
    from strategies.agents.train import train_crypto_module
    from strategies.features.inputs import MissingDataError

    cfg = load(config)
    coin = coin.upper().split("/")[0]
    if coin not in cfg.market.coins:
        fail(f"--coin {coin}: not one of the configured coins {list(cfg.market.coins)}")
    try:
        folders = train_crypto_module(cfg, coin, seed)
    except MissingDataError as exc:
        fail(str(exc))
        return
    for folder in folders:
        console.print(f"saved {folder}")


@app.command("list")
def list_(config: ConfigOption = None) -> None:
    """Every trained Crypto Module: coin, id, seed, validation scores."""
    from strategies.registry import list_models

    cfg = load(config)
    models = list_models(cfg.training.models_dir)
    if not models:
        console.print(f"no models in {cfg.training.models_dir} (train one: cryptorlpm train)")
        return
    table = Table(title=f"Crypto Modules in {cfg.training.models_dir}")
    for column in ("coin", "id", "tf", "seed", "created", "val SAM", "val B&H"):
        table.add_column(column)
    for m in models:
        table.add_row(
            m.coin,
            m.id,
            m.timeframe,
            str(m.seed),
            m.created_at[:19],
            f"{m.validation_sam:+.4f}",
            f"{m.validation_buy_and_hold:+.4f}",
        )
    console.print(table)


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
