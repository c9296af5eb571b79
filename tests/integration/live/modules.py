"""Tiny Crypto Modules for daemon tests on the fake exchange."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from bot.timeframes import MINUTE_MS
from strategies.agents.train import CoinHistory, Windows, train_cm
from strategies.registry import save_crypto_module
from tests.fakes.binance import FakeBinance
from tests.integration.live.harness import T0
from tests.unit.agents.conftest import COST, TINY


def fake_history(fake: FakeBinance, coin: str) -> tuple[CoinHistory, Windows]:
    """The fake's 1m bars of ``coin`` up to an hour before ``T0`` (price features only), and
    training / validation windows splitting them in half."""
    frame = fake.candles(f"{coin}USDT", "1m")
    frame = frame[frame.open_time < T0 - 60 * MINUTE_MS]
    n = len(frame)
    history = CoinHistory(
        coin=coin,
        timeframe="1m",
        open_time=frame.open_time.to_numpy(np.int64),
        ohlcv=frame[["open", "high", "low", "close", "volume"]].to_numpy(np.float64),
        features=np.zeros((n, 0)),
        ready=np.ones(n, dtype=bool),
        feature_names=(),
    )
    close = history.close_time
    windows = Windows((int(close[0]), int(close[n // 2])), (int(close[n // 2]), int(close[-1]) + 1))
    return history, windows


def constant_module(fake: FakeBinance, root: Path, coin: str, action: int, stamp: int) -> str:
    """A tiny CM on the fake's 1m bars (price features only) whose SAM always picks
    ``action`` (0 cash, 1 coin); returns its registry id."""
    history, windows = fake_history(fake, coin)
    trained = train_cm(
        history, windows, TINY.model_copy(update={"use_eam": False}), seed=1, cost=COST
    )
    state = trained.sam.state_dict
    state["head.weight"].zero_()
    state["head.bias"].copy_(torch.tensor([1.0, 0.0] if action == 0 else [0.0, 1.0]))
    created = datetime.fromtimestamp(1_700_000_000 + stamp, UTC)
    return save_crypto_module(root, trained, exchange="binance", created_at=created).name
