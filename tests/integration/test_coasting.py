"""Coasting: a replay through the instants a policy declared quiet decides, values and trips
the kill switch exactly as stepping every one of them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest

from backtest import replay as replay_module
from backtest.replay import ReplayDriver
from backtest.result import RunResult
from backtest.run import run_backtest
from bot.engine import DecisionContext, Engine, RiskGate, Stretch
from bot.timeframes import HOUR_MS
from config.schema import AppConfig, BrokerConfig, MarketConfig, MarketRulesConfig, RiskConfig
from strategies.baselines import BuyAndHold, EqualWeightBuyAndHold

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
COINS = ("BTC", "ETH", "SOL")
N = 600


def market(seed: int = 3, drift: float = 0.0, gaps: bool = True) -> dict[str, pd.DataFrame]:
    """Random-walk hourly bars; SOL misses a few stretches of bars (an outage, a late listing)."""
    rng = np.random.default_rng(seed)
    frames = {}
    for k, coin in enumerate(COINS):
        close = (100.0 + 50 * k) * np.exp(np.cumsum(rng.normal(drift, 0.01, N)))
        open_ = np.r_[close[0], close[:-1]]
        frame = pd.DataFrame(
            {
                "open_time": T0 + np.arange(N) * HOUR_MS,
                "open": open_,
                "high": np.maximum(open_, close) * 1.002,
                "low": np.minimum(open_, close) * 0.998,
                "close": close,
                "volume": rng.uniform(50, 150, N),
            }
        )
        if gaps and coin == "SOL":
            keep = np.ones(N, dtype=bool)
            keep[:40] = False  # listed late
            keep[200:230] = False  # an outage inside a quiet stretch
            keep[401:404] = False
            frame = frame[keep].reset_index(drop=True)
        frames[f"{coin}/USDT"] = frame
    return frames


def metrics() -> pd.DataFrame:
    """Daily metrics known at odd times: instants carrying them are built one by one."""
    known = T0 + np.arange(3, N, 24) * HOUR_MS + 17 * 60_000
    return pd.DataFrame(
        {
            "known_at": known,
            "asset": "BTC",
            "name": "active_addresses",
            "observed_at": known - 24 * HOUR_MS,
            "value": np.arange(len(known), dtype=float),
        }
    )


def config(**risk: object) -> AppConfig:
    return AppConfig(
        market=MarketConfig(coins=COINS, timeframe="1h"),
        broker=BrokerConfig(
            initial_cash=10_000.0,
            fee_rate=0.001,
            slippage_bps=5,
            default_rules=MarketRulesConfig(step_size=0.0001, tick_size=0.01, min_notional=5.0),
        ),
        risk=RiskConfig(**risk),
    )


def driver(bars: Mapping[str, pd.DataFrame], start: int = 100) -> ReplayDriver:
    return ReplayDriver(
        bars, exchange="x", timeframe="1h", metrics=metrics(), start_ms=T0 + start * HOUR_MS
    )


class Signals:
    """Random target weights at a few closes, decided in ``prepare``; quiet everywhere else.
    Counts its ``decide`` calls."""

    name = "signals"

    def __init__(self, seed: int = 7, every: int = 37) -> None:
        self.seed, self.every = seed, every
        self.targets: dict[int, dict[str, float]] = {}
        self.calls = 0

    def prepare(self, replay: ReplayDriver) -> None:
        rng = np.random.default_rng(self.seed)
        times = replay.instant_times()
        picks = np.flatnonzero(
            (np.arange(len(times)) % self.every == 5) & (times >= replay.start_ms)
        )
        for i in picks.tolist():
            raw = rng.dirichlet(np.ones(len(COINS) + 1))
            self.targets[int(times[i])] = dict(zip((*COINS, "USDT"), raw.tolist(), strict=True))
        self.quiet = np.array([int(t) not in self.targets for t in times.tolist()])

    def quiet_instants(self, replay: ReplayDriver) -> np.ndarray:
        return self.quiet

    def decide(self, context: DecisionContext) -> dict[str, float] | None:
        self.calls += 1
        return self.targets.get(context.ts)


class Stepped:
    """The same policy with no quiet instants declared: every instant is stepped."""

    def __init__(self, policy: object) -> None:
        self.policy = policy
        self.name = policy.name  # type: ignore[attr-defined]

    def prepare(self, replay: ReplayDriver) -> None:
        prepare = getattr(self.policy, "prepare", None)
        if prepare is not None:
            prepare(replay)

    def decide(self, context: DecisionContext) -> Mapping[str, float] | None:
        return self.policy.decide(context)  # type: ignore[attr-defined]


class CoastSpy:
    """Counts the stretches the engine coasted and those it handed back to be stepped, and
    keeps every engine built (to compare their state after the runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.coasted = self.stepped = 0
        self.engines: list[Engine] = []
        original = Engine.coast
        build = Engine.__init__

        def init(engine: Engine, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            build(engine, *args, **kwargs)
            self.engines.append(engine)

        monkeypatch.setattr(Engine, "__init__", init)

        def coast(engine: Engine, stretch):  # type: ignore[no-untyped-def]
            equities = original(engine, stretch)
            if equities is None:
                self.stepped += 1
            else:
                self.coasted += 1
            return equities

        monkeypatch.setattr(Engine, "coast", coast)


def assert_same_state(coasted: Engine, stepped: Engine) -> None:
    """Account and kill switch left as stepping leaves them (dict order included)."""
    for account in ("prices", "last_bars", "holdings"):
        assert list(getattr(coasted.account, account).items()) == list(
            getattr(stepped.account, account).items()
        )
    assert coasted.account.cash == stepped.account.cash
    for gate in ("peak", "equity", "halted", "flatten_due"):
        assert getattr(coasted.gate, gate) == getattr(stepped.gate, gate)


def assert_same_run(coasted: RunResult, stepped: RunResult) -> None:
    pd.testing.assert_series_equal(coasted.equity, stepped.equity, check_exact=True)
    pd.testing.assert_frame_equal(coasted.weights, stepped.weights, check_exact=True)
    for frame in ("trades", "refusals", "rejections", "audit", "trims"):
        pd.testing.assert_frame_equal(
            getattr(coasted, frame), getattr(stepped, frame), check_exact=True
        )
    assert coasted.fees_paid == stepped.fees_paid


@pytest.mark.parametrize(("chunk", "min_stretch"), [(4096, 8), (7, 2), (50, 3)])
async def test_a_coasted_replay_is_the_stepped_one_with_gaps_metrics_and_warm_up(
    monkeypatch: pytest.MonkeyPatch, chunk: int, min_stretch: int
) -> None:
    # Small chunks: stretches and stepped pieces cut at chunk boundaries.
    monkeypatch.setattr(replay_module, "CHUNK", chunk)
    monkeypatch.setattr(replay_module, "MIN_STRETCH", min_stretch)
    bars = market()
    spy = CoastSpy(monkeypatch)
    policy = Signals()
    coasted = await run_backtest(config(), policy, driver(bars), name="s")
    stepped = await run_backtest(config(), Stepped(Signals()), driver(bars), name="s")
    assert_same_run(coasted, stepped)
    assert_same_state(*spy.engines)
    assert len(coasted.trades) > 20
    assert (coasted.refusals["rule"] == "stale_data").any()  # SOL's outage, seen after coasting
    assert spy.coasted > 10 and spy.stepped == 0
    assert policy.calls < N // 4  # called at its signals and short runs only


@pytest.mark.parametrize("on_drawdown", ["halt", "flatten"])
async def test_the_kill_switch_trips_at_the_same_close_inside_a_quiet_stretch(
    monkeypatch: pytest.MonkeyPatch, on_drawdown: str
) -> None:
    bars = market(seed=11, drift=-0.002)  # a falling market: the drawdown limit is reached
    cfg = config(max_drawdown=0.15, on_drawdown=on_drawdown)
    spy = CoastSpy(monkeypatch)
    coasted = await run_backtest(cfg, Signals(every=97), driver(bars), name="s")
    stepped = await run_backtest(cfg, Stepped(Signals(every=97)), driver(bars), name="s")
    assert_same_run(coasted, stepped)
    assert_same_state(*spy.engines)
    trips = coasted.refusals[coasted.refusals["rule"] == "max_drawdown"]
    assert len(trips) == 1
    assert spy.stepped >= 1  # the stretch holding the trip was stepped
    assert spy.coasted > 5  # and coasting went on after it, halted
    if on_drawdown == "flatten":
        after = coasted.trades[coasted.trades["ts"] > trips["ts"].iloc[0]]
        assert set(after["side"]) == {"sell"}


@pytest.mark.parametrize("policy", [BuyAndHold("ETH"), EqualWeightBuyAndHold(COINS)])
async def test_held_baselines_coast_after_their_purchase(
    monkeypatch: pytest.MonkeyPatch, policy: object
) -> None:
    bars = market(seed=5)
    spy = CoastSpy(monkeypatch)
    coasted = await run_backtest(config(), policy, driver(bars), name="bh")  # type: ignore[arg-type]
    twin = type(policy)("ETH") if isinstance(policy, BuyAndHold) else type(policy)(COINS)
    stepped = await run_backtest(config(), Stepped(twin), driver(bars), name="bh")
    assert_same_run(coasted, stepped)
    assert_same_state(*spy.engines)
    assert len(coasted.trades) >= 1
    assert spy.coasted >= 2  # warm-up before the purchase, and everything after it


async def test_a_quiet_mask_of_the_wrong_length_is_refused_by_name() -> None:
    class Broken(Signals):
        def quiet_instants(self, replay: ReplayDriver) -> np.ndarray:
            return np.ones(3, dtype=bool)

    with pytest.raises(ValueError, match="policy 'signals': quiet_instants must be"):
        await run_backtest(config(), Broken(), driver(market()), name="s")


def test_stretches_step_as_the_instants_they_stand_for() -> None:
    replay = driver(market())
    times = replay.instant_times()
    quiet = np.random.default_rng(1).random(len(times)) < 0.9
    flat = []
    for run in replay.runs(quiet=quiet):
        flat.extend(run.instants() if isinstance(run, Stretch) else run)
    assert flat == list(replay.instants())


def test_the_kill_switch_follows_a_path_as_one_valuation_after_another() -> None:
    rng = np.random.default_rng(2)
    for trial in range(200):
        cfg = RiskConfig(max_drawdown=0.2)
        at_once, one_by_one = RiskGate(cfg, "USDT"), RiskGate(cfg, "USDT")
        if trial % 2:  # a gate that has seen equity before
            at_once.observe_equity(0, 120.0)
            one_by_one.observe_equity(0, 120.0)
        path = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.05, 30)))
        if trial % 7 == 0:
            path[rng.integers(30)] = np.nan  # a valuation with no price
        followed = at_once.observe_path(path)
        trips = [one_by_one.observe_equity(i + 1, float(e)) for i, e in enumerate(path)]
        tripped = any(t is not None for t in trips)
        assert followed is not (tripped or bool(np.isnan(path).any()))
        if followed:
            assert (at_once.peak, at_once.equity) == (one_by_one.peak, one_by_one.equity)
        else:
            assert at_once.halted is None


def test_two_symbols_of_one_coin_are_always_stepped() -> None:
    bars = market(gaps=False)
    two_quotes = {"BTC/USDT": bars["BTC/USDT"], "BTC/BUSD": bars["BTC/USDT"]}
    replay = ReplayDriver(two_quotes, exchange="x", timeframe="1h")
    quiet = np.ones(len(replay.instant_times()), dtype=bool)
    runs = list(replay.runs(quiet=quiet))
    assert not any(isinstance(run, Stretch) for run in runs)


async def test_coins_first_priced_inside_a_stretch_keep_the_stepping_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bars = market(gaps=False)
    bars["SOL/USDT"] = bars["SOL/USDT"].iloc[50:].reset_index(drop=True)  # listed late
    bars["BTC/USDT"] = bars["BTC/USDT"].iloc[60:].reset_index(drop=True)  # and later still
    spy = CoastSpy(monkeypatch)
    start = 0
    coasted = await run_backtest(
        config(), EqualWeightBuyAndHold(COINS), driver(bars, start), name="e"
    )
    stepped = await run_backtest(
        config(), Stepped(EqualWeightBuyAndHold(COINS)), driver(bars, start), name="e"
    )
    assert_same_run(coasted, stepped)
    assert_same_state(*spy.engines)
    assert list(spy.engines[0].account.prices) == ["ETH", "SOL", "BTC"]


async def test_a_duplicated_bar_does_not_pass_for_a_full_grid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bars = market(gaps=False)
    eth, btc = bars["ETH/USDT"], bars["BTC/USDT"]
    bars["ETH/USDT"] = eth.drop(index=300).reset_index(drop=True)  # ETH misses a close
    bars["BTC/USDT"] = pd.concat([btc, btc.iloc[[300]]]).reset_index(drop=True)  # BTC twice
    spy = CoastSpy(monkeypatch)
    coasted = await run_backtest(config(), EqualWeightBuyAndHold(COINS), driver(bars), name="e")
    stepped = await run_backtest(
        config(), Stepped(EqualWeightBuyAndHold(COINS)), driver(bars), name="e"
    )
    assert_same_run(coasted, stepped)
    assert_same_state(*spy.engines)
    assert spy.coasted >= 2
