"""The configuration schema. Every section is frozen and rejects unknown keys.

Secrets never live here: they come from the environment through :class:`Secrets`.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

_TIMEFRAME = re.compile(r"^[1-9]\d*[mhdw]$")
_SYMBOL = re.compile(r"^[A-Z0-9]{2,15}$")


def _check_timeframe(value: str) -> str:
    if not _TIMEFRAME.match(value):
        raise ValueError("expected a timeframe like '1m', '15m', '1h', '6h' or '1d'")
    return value


def _check_coin(value: str) -> str:
    if not _SYMBOL.match(value):
        raise ValueError("expected an upper-case coin ticker such as 'BTC'")
    return value


def _date_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


Timeframe = Annotated[str, AfterValidator(_check_timeframe)]
Coin = Annotated[str, AfterValidator(_check_coin)]


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class DataConfig(Section):
    """Where the SQLite stores live."""

    dir: Path = Field(Path("var/demo"), description="folder holding market.db and metrics.db")
    market_db: str = Field("market.db", description="file name of the OHLCV store")
    metrics_db: str = Field("metrics.db", description="file name of the metric store")

    @property
    def market_path(self) -> Path:
        """Full path of ``market.db``."""
        return self.dir / self.market_db

    @property
    def metrics_path(self) -> Path:
        """Full path of ``metrics.db``."""
        return self.dir / self.metrics_db


class MarketConfig(Section):
    """Which coins, where their candles come from, and at which timeframes."""

    source: Literal["synthetic", "csv", "exchange"] = "synthetic"
    exchange: str = Field("synthetic", description="exchange name the bars are stored under")
    quote: Coin = "USDT"
    coins: tuple[Coin, ...] = ("BTC", "ETH", "SOL", "LINK", "STORJ")
    base_timeframe: Timeframe = Field("1h", description="timeframe candles are stored in")
    timeframe: Timeframe = Field("6h", description="timeframe the strategy trades on")
    start: date = date(2020, 1, 1)
    end: date = date(2022, 12, 31)
    csv_dir: Path | None = Field(None, description="folder laid out like ../shared/data")

    @model_validator(mode="after")
    def _check(self) -> MarketConfig:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if not self.coins:
            raise ValueError("coins must list at least one coin")
        if len(set(self.coins)) != len(self.coins):
            raise ValueError(f"coins has duplicates: {self.coins}")
        return self

    @property
    def start_ms(self) -> int:
        """00:00 UTC of ``start`` in epoch ms (inclusive)."""
        return _date_ms(self.start)

    @property
    def end_ms(self) -> int:
        """Exclusive end in epoch ms: 00:00 UTC of the day after ``end`` (``end`` is inclusive)."""
        return _date_ms(self.end + timedelta(days=1))

    def symbol(self, coin: str) -> str:
        """ccxt market symbol of ``coin`` against the quote currency, e.g. ``BTC/USDT``."""
        return f"{coin}/{self.quote}"


class SyntheticConfig(Section):
    """The embedded synthetic market (regime-switching, correlated coins, planted metrics)."""

    seed: int = 7
    leading_metrics: int = Field(12, ge=0, description="metrics per coin that lead returns")
    noise_metrics: int = Field(12, ge=0, description="metrics per coin unrelated to returns")
    market_metrics: int = Field(4, ge=0, description="market-wide metrics (noise) for every coin")
    scenarios: tuple[Literal["covid_crash", "luna_collapse", "flash_crash"], ...] = (
        "covid_crash",
        "luna_collapse",
        "flash_crash",
    )


class MetricsConfig(Section):
    """How metric values become known, and which are offered to every coin."""

    publication_lag_hours: float = Field(
        1.0, ge=0, description="a daily value is known this long after its day ends"
    )
    market_wide_assets: tuple[str, ...] = Field(
        ("BTC", "MARKET"),
        description="assets whose metrics every coin may select (BTC's network metrics, and the "
        "synthetic market's MARKET series)",
    )

    @property
    def publication_lag_ms(self) -> int:
        """The publication lag in epoch milliseconds."""
        return int(self.publication_lag_hours * 3_600_000)


class ExchangeConfig(Section):
    """The ccxt exchange used for downloads and live trading."""

    id: str = "binance"
    sandbox: bool = Field(False, description="use the exchange's testnet URLs")
    api_url: str | None = Field(
        None, description="replace the host of every API URL (a proxy or a local fake)"
    )
    rate_limit: bool = Field(True, description="let ccxt throttle to the exchange's limits")
    timeout_ms: int = Field(10_000, gt=0)
    max_retries: int = Field(5, ge=0, description="retries of a temporary error")
    retry_base_s: float = Field(1.0, gt=0, description="first backoff delay, doubled each retry")
    weight_limit: int = Field(6000, gt=0, description="request weight allowed per minute")
    weight_headroom: float = Field(
        0.8, gt=0, le=1, description="share of the weight limit after which requests wait"
    )
    ca_file: Path | None = Field(
        None, description="extra trusted certificate authority (PEM), e.g. of a TLS proxy"
    )
    resolve: dict[str, str] = Field(
        default_factory=dict,
        description="host name -> IP address to connect to (like curl --resolve)",
    )


class SantimentConfig(Section):
    """Santiment (sanpy) metric download."""

    api_url: str | None = Field(None, description="GraphQL endpoint; None keeps sanpy's default")
    slugs: dict[str, str] = Field(
        default_factory=lambda: {"BTC": "bitcoin", "ETH": "ethereum", "LINK": "chainlink"}
    )
    metrics: tuple[str, ...] = Field(
        default_factory=lambda: (
            "daily_active_addresses",
            "transaction_volume",
            "network_growth",
            "exchange_inflow",
            "exchange_outflow",
            "social_volume_total",
            "dev_activity",
            "mvrv_usd",
        )
    )
    retries: int = Field(3, ge=0)


class FeatureConfig(Section):
    """Data Refinement Unit: metric selection and causal rolling normalisation + PCA."""

    horizons_days: tuple[int, ...] = (12, 24, 48)
    per_horizon: int = Field(5, gt=0, description="top and bottom k correlations per horizon")
    keep: int = Field(10, gt=0, description="metrics kept after ranking by frequency")
    norm_window_days: int = Field(90, gt=1, description="rolling z-score window")
    pca_window_days: int = Field(180, gt=1, description="rolling PCA window")
    pca_variance: float = Field(0.8, gt=0, le=1, description="variance the components must explain")
    min_obs: int = Field(60, gt=2, description="days of overlap a candidate needs to be ranked")
    max_stale_days: int | None = Field(
        14, ge=0, description="drop candidates whose series ends this long before training ends"
    )
    min_periods_days: int = Field(30, gt=1, description="days of history before features are used")


class DateWindow(Section):
    """A range of whole UTC days, both ends inclusive."""

    start: date
    end: date

    @model_validator(mode="after")
    def _check(self) -> DateWindow:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not be before start ({self.start})")
        return self

    @property
    def start_ms(self) -> int:
        """00:00 UTC of ``start`` in epoch ms."""
        return _date_ms(self.start)

    @property
    def end_ms(self) -> int:
        """Exclusive end: 00:00 UTC of the day after ``end``, in epoch ms."""
        return _date_ms(self.end + timedelta(days=1))

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


class WindowsConfig(Section):
    """Train / validation / test windows by date: in order, never overlapping.

    Feature selection and training see only ``train``; checkpoints are chosen on
    ``validation``; results are reported on ``test``, which nothing was fitted on.
    """

    train: DateWindow = DateWindow(start=date(2020, 1, 1), end=date(2021, 12, 31))
    validation: DateWindow = DateWindow(start=date(2022, 1, 1), end=date(2022, 6, 30))
    test: DateWindow = DateWindow(start=date(2022, 7, 1), end=date(2022, 12, 31))

    @model_validator(mode="after")
    def _check(self) -> WindowsConfig:
        if not self.train.end < self.validation.start:
            raise ValueError(
                f"validation ({self.validation}) must start after train ({self.train}) ends"
            )
        if not self.validation.end < self.test.start:
            raise ValueError(
                f"test ({self.test}) must start after validation ({self.validation}) ends"
            )
        return self


class MarketRulesConfig(Section):
    """Exchange filters of one market (Binance: LOT_SIZE, PRICE_FILTER, NOTIONAL)."""

    step_size: float = Field(1e-8, gt=0, description="amounts are multiples of this (lot size)")
    tick_size: float = Field(1e-8, gt=0, description="limit prices are multiples of this")
    min_notional: float = Field(5.0, ge=0, description="smallest order value in quote currency")


class BrokerConfig(Section):
    """The simulated broker of backtests (and the paper executor of the daemon)."""

    initial_cash: float = Field(10_000.0, gt=0, description="starting cash in the quote currency")
    fee_rate: float = Field(0.001, ge=0, lt=0.1, description="taker fee, 0.001 = Binance spot 0.1%")
    slippage_bps: float = Field(
        5.0, ge=0, description="market orders fill this many basis points worse than the open"
    )
    default_rules: MarketRulesConfig = MarketRulesConfig()
    rules: dict[str, MarketRulesConfig] = Field(
        default_factory=dict, description="per-coin exchange filters, e.g. rules.BTC.step_size"
    )

    def rules_for(self, coin: str) -> MarketRulesConfig:
        """The filters of ``coin``: its own entry, else the defaults."""
        return self.rules.get(coin, self.default_rules)

    @property
    def trading_cost(self) -> float:
        """Cost of trading one unit of equity, as a rate: the fee plus the slippage
        (``fee_rate + slippage_bps / 10_000``). Training charges exactly this on every change of
        position, so the agents learn against the costs their backtests and live trading pay:
        one setting, not two."""
        return self.fee_rate + self.slippage_bps / 10_000


class ExecutionConfig(Section):
    """How a large order is executed: in slices over the interval, front-loaded when the
    signal decays fast; and the market impact the simulated venue charges."""

    slice_above_volume_share: float | None = Field(None, gt=0)
    """Slice an order whose amount exceeds this share of its coin's mean bar volume over the
    last ``volume_lookback_bars`` bars (None, the default: never by volume; 0.02 is a common
    choice)."""
    slice_above_notional: float | None = Field(None, gt=0)
    """Slice an order whose notional exceeds this, in the quote currency (None: never)."""
    max_slices: int = Field(4, ge=1, le=9)
    """Most slices of one order (each is at least one lot and the minimum notional)."""
    spread: float = Field(0.75, gt=0, le=1)
    """Share of the bar interval the slices are spread over (the last leaves room before the
    next close)."""
    schedule: Literal["twap", "decay"] = "decay"
    """``twap``: equal slices at equal spacing; ``decay``: front-loaded by how fast the
    policy's signal decays (its target weights' lag-1 autocorrelation), TWAP when it persists."""
    volume_lookback_bars: int = Field(20, ge=1)
    impact_coefficient: float = Field(0.0, ge=0)
    """Simulated venue: square-root market impact ``k * sqrt(amount / depth)`` of the price,
    ``depth`` being ``liquidity_window`` of the bar's volume (0: no impact)."""
    liquidity_window: float = Field(0.05, gt=0, le=1)
    """Share of a bar's volume one order meets at once (the rest of the bar's liquidity comes
    back between slices)."""


class RiskConfig(Section):
    """Guardrails outside every network: no policy can override them."""

    max_weight_per_coin: float = Field(1.0, gt=0, le=1, description="cap on any coin's weight")
    min_cash: float = Field(0.0, ge=0, lt=1, description="share of equity always kept in cash")
    min_trade_weight: float = Field(
        0.0, ge=0, lt=1, description="ignore rebalancing moves smaller than this share of equity"
    )
    max_order_notional: float | None = Field(None, gt=0)
    """Largest single order in the quote currency; bigger orders are cut to it (None: no cap)."""
    max_daily_turnover: float | None = Field(None, gt=0)
    """Most traded notional per UTC day, as a multiple of the equity at the day's first
    decision (2.0 = trade at most twice the equity); orders beyond it are cut or refused."""
    max_drawdown: float | None = Field(None, gt=0, lt=1)
    """Kill switch: when equity falls this far below its running peak (0.25 = 25%), trading
    stops (``on_drawdown``) until an operator resumes it. None: no kill switch."""
    on_drawdown: Literal["halt", "flatten"] = "halt"
    """What the kill switch does: ``halt`` sends no more orders; ``flatten`` sells every coin
    to cash once, then halts."""
    stale_after_bars: int | None = Field(2, ge=1)
    """Stale-data halt: no orders at a decision when a coin's latest bar closed more than this
    many intervals before it (None: never)."""


# -- agents and training (PAU) ---------------------------------------------------------------


class DQNParams(Section):
    """Hyperparameters of one DQN agent (the EAM or the SAM)."""

    total_env_steps: int = Field(48_000, gt=0)
    """Environment steps to train for, summed over the parallel environments."""
    gamma: float = Field(0.9, ge=0.0, lt=1.0)
    """Discount factor of future rewards (per bar)."""
    learning_rate: float = Field(1e-3, gt=0.0)
    """Adam step size."""
    batch_size: int = Field(64, gt=0)
    """Transitions per gradient update."""
    buffer_size: int = Field(50_000, gt=0)
    """Capacity of the replay buffer, in transitions."""
    learning_starts: int = Field(2_000, ge=0)
    """Environment steps collected before the first gradient update."""
    updates_per_step: int = Field(1, gt=0)
    """Gradient updates after each vector step (one step of every parallel environment)."""
    target_update_interval: int = Field(200, gt=0)
    """Gradient updates between two copies of the online network into the target network."""
    epsilon_start: float = Field(1.0, ge=0.0, le=1.0)
    """Exploration rate at the first step."""
    epsilon_end: float = Field(0.05, ge=0.0, le=1.0)
    """Exploration rate after the decay."""
    exploration_fraction: float = Field(0.5, gt=0.0, le=1.0)
    """Share of ``total_env_steps`` over which epsilon decays linearly to ``epsilon_end``."""
    huber_delta: float = Field(1.0, gt=0.0)
    """Where the Huber loss turns from quadratic to linear (in scaled reward units)."""
    max_grad_norm: float = Field(10.0, gt=0.0)
    """Gradients are clipped to this global L2 norm before each step."""
    channels: tuple[int, ...] = (16, 32, 32)
    """Convolution widths: EAM uses the first, SAM all three (conv1/conv2, conv3, conv4)."""
    hidden: int = Field(64, gt=0)
    """Width of the EAM's hidden linear layer (the SAM's is ``channels[2]``)."""
    eval_interval: int = Field(100, gt=0)
    """Vector steps between two validation evaluations (the best one is kept)."""
    double_dqn: bool = False
    """Double DQN (van Hasselt et al., 2016): the next action is chosen by the online network
    and valued by the target network, which removes the max operator's upward bias. False is
    the paper's plain DQN."""
    trained_checkpoints_only: bool = False
    """Checkpoint selection considers only networks that have had gradient updates (scored
    after ``learning_starts``), so an untrained network can never be kept; False is the
    paper's selection, which may keep the initial network when nothing later beats it on
    validation."""

    @model_validator(mode="after")
    def _check(self) -> DQNParams:
        if len(self.channels) != 3 or min(self.channels) <= 0:
            raise ValueError(f"channels must be three positive widths, got {self.channels}")
        return self


class CryptoModuleParams(Section):
    """Every hyperparameter of one Crypto Module (EAM + SAM) and of its training environment."""

    window: int = Field(32, ge=5)
    """Intervals of history in the state (the paper's ``n``)."""
    turnover_penalty: float = Field(0.0, ge=0.0, lt=1.0)
    """Extra cost per change of position charged in the SAM's training reward only (on top of
    the real trading cost, which comes from ``[broker]``): a hysteresis the agent learns, so
    that it changes position only for a move worth more than this. 0 is the paper's reward."""
    reward_scale: float = Field(100.0, gt=0.0)
    """Rewards are multiplied by this for learning only (1.0 = 1 %); scores stay unscaled."""
    num_envs: int = Field(16, gt=0)
    """Parallel environments stepped as one batch."""
    episode_length: int = Field(128, gt=1)
    """Steps before an environment restarts at a random bar with a random position."""
    use_eam: bool = True
    """Train an EAM and stack its buy/hold/sell signal into the SAM's state (optional in MSPM)."""
    eam: DQNParams = DQNParams(
        total_env_steps=24_000,
        gamma=0.0,
        learning_starts=1_000,
        exploration_fraction=0.3,
        channels=(16, 16, 16),
    )
    """The EAM agent. With ``gamma`` 0 (the default) it is a *contextual bandit*, not a
    sequential decision maker: its actions do not change its next state, so it learns the
    expected immediate reward of buy / hold / sell given the state (a classifier of the next
    bar's direction, trained with a DQN's machinery) and the future term would only add noise."""
    sam: DQNParams = DQNParams()
    """The SAM agent."""
    torch_threads: int = Field(1, ge=1)
    """Threads torch may use (small networks run fastest, and reproducibly, on one)."""

    fee: None = Field(None, exclude=True)
    """Removed: training charges ``[broker].fee_rate + [broker].slippage_bps``
    (:attr:`BrokerConfig.trading_cost`), the costs backtests and live trading pay."""

    @field_validator("fee", mode="before")
    @classmethod
    def _fee_removed(cls, value: object) -> None:
        if value is not None:
            raise ValueError(
                "removed: training now charges [broker].fee_rate + [broker].slippage_bps, the "
                "costs backtests and live trading pay; delete [agents].fee and set the costs in "
                "[broker]"
            )
        return None


class TrainingConfig(Section):
    """Which seeds ``cryptorlpm train`` runs and where the registry lives.

    The train / validation / test dates are the config's ``[windows]`` section
    (:class:`config.schema.WindowsConfig`), shared with feature selection and backtests.
    """

    seeds: tuple[int, ...] = Field((1,), min_length=1)
    """Seeds trained when none is given on the command line (one artifact each)."""
    models_dir: Path = Path("var/models")
    """Root of the model registry: ``<models_dir>/<coin>/<model id>/``."""


# -- live trading, alerts and agent updating (LTU, Telegram, AUU) ------------------------------


class LiveConfig(Section):
    """The live daemon (``cryptorlpm live``): when it wakes, where it trades, how it orders.

    The daemon trades ``[market].coins`` on ``[market].timeframe`` (10-30 minutes is the
    paper's range) against ``[exchange]``; ``paper`` (or ``--paper``) keeps every fill
    simulated on live prices and needs no API key.
    """

    paper: bool = False
    """Simulate fills on live prices instead of sending orders (no API key needed)."""
    state_db: str = "state.db"
    """File (under ``[data].dir``) holding orders, cycles, refusals and balances."""
    policy: Literal["vote", "equal_weight", "hold", "mars", "mars+manager"] = "vote"
    """What decides: the Crypto Modules' vote, 1/N rebalancing, holding cash only, or the
    risk-profiled ensembles (``mars``: per coin, agent variants weighted by a meta-controller;
    ``mars+manager``: the same under a manager that sets the gross exposure). See ``[mars]``."""
    models: dict[str, str] = Field(default_factory=dict)
    """Model id per coin for the vote; a coin not listed uses its registry's active (else
    newest) model under ``[training].models_dir``."""
    grace_s: float = Field(3.0, ge=0)
    """Seconds after a bar's close (on the exchange's clock) before the cycle starts."""
    order_type: Literal["market", "limit"] = "market"
    """Market orders, or limit orders at the reference price +- ``limit_offset_bps``."""
    limit_offset_bps: float = Field(5.0, ge=0)
    """How far past the reference price a limit order is placed (buy above, sell below)."""
    limit_timeout_s: float = Field(60.0, gt=0)
    """A limit order still open after this is cancelled; its filled part is kept."""
    order_poll_s: float = Field(1.0, gt=0)
    """Seconds between status queries of an open order."""
    reconcile_every: int = Field(12, ge=1)
    """Reconcile balances and open orders with the exchange every this many cycles (and at
    every start)."""
    unknown_settle_s: float = Field(60.0, ge=0)
    """An order of unknown fate with no record on the exchange is taken as never received once
    ``recvWindow`` (10 s) plus this has passed since it was signed; until then it blocks its
    coin and is never resent."""
    resume_within_bars: int = Field(1, ge=0)
    """An interrupted cycle's remaining orders are sent on restart only if its close is at
    most this many bars old; older plans are abandoned and the next cycle re-plans."""
    warmup_days: int = Field(240, ge=1)
    """History (from the stores, topped up from the exchange) replayed into the modules at
    start so their rolling features are ready."""
    clock_speed: float = Field(1.0, gt=0)
    """How many times faster than the local clock the exchange's clock runs (1 in production;
    an accelerated fake exchange in tests and benchmarks)."""
    clock_poll_s: float = Field(5.0, gt=0)
    """While waiting for a close, the exchange's clock is read at least this often (a local
    clock that drifts or a suspended host is noticed within this)."""
    max_cycles: int | None = Field(None, ge=1)
    """Stop after this many cycles (tests, benchmarks); None runs until stopped."""
    bar_source: Literal["websocket", "rest"] = "websocket"
    """Where closed bars come from: the exchange's kline websocket (Binance's combined stream;
    REST fills gaps, backfills after a reconnect and stands in for a late bar), or REST alone."""
    stream_stall_s: float = Field(30.0, gt=0)
    """A kline websocket with no message for this long is taken as dropped and replaced."""
    stream_reconnect_s: float = Field(1.0, gt=0)
    """First wait before reconnecting a dropped kline websocket (doubled up to 60 s)."""
    metrics_refresh_minutes: float | None = Field(60.0, gt=0)
    """How often the modules' on-chain metrics are fetched from Santiment into metrics.db
    (after a cycle); None fetches them only at start."""
    metric_max_age_days: float = Field(2.0, gt=0)
    """A module whose selected metric's newest value describes a day that ended longer ago
    than this is not ready (its inputs are stale)."""
    not_ready: Literal["cash", "hold"] = "cash"
    """What the vote does with a module that is not ready: count it as all cash, or hold the
    weight it voted while its inputs were fresh. Either way it is reported, never silent."""
    control_socket: str = "control.sock"
    """Unix socket (under ``[data].dir``) where ``cryptorlpm live pause|resume|...`` reach the
    running daemon."""


class TelegramConfig(Section):
    """Alerts and commands through the Telegram Bot API (token: ``CRYPTORLPM_TELEGRAM_TOKEN``)."""

    enabled: bool = False
    api_url: str = "https://api.telegram.org"
    """Bot API base URL (requests go to ``<api_url>/bot<token>/<method>``)."""
    chat_ids: tuple[int, ...] = ()
    """Chats that receive alerts and whose commands are obeyed; every other chat is refused."""
    queue_size: int = Field(200, ge=1)
    """Alerts waiting to be sent; when full the oldest is dropped and counted."""
    per_chat_per_s: float = Field(1.0, gt=0)
    """Messages per second to one chat (Telegram allows about 1)."""
    global_per_s: float = Field(25.0, gt=0)
    """Messages per second over all chats (Telegram allows about 30)."""
    poll_timeout_s: int = Field(25, ge=0)
    """Long-poll timeout of ``getUpdates``."""
    daily_summary_hour: int | None = Field(0, ge=0, le=23)
    """UTC hour of the daily summary with an equity chart (None: no summary)."""
    alert_fills: bool = True
    alert_refusals: bool = True


class DashboardConfig(Section):
    """The web dashboard the live daemon serves (read-only: equity, weights, decisions,
    refusals, module health, input freshness). Off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    """Address to listen on. Anything but a loopback address needs a token (``token_env``)."""
    port: int = Field(8787, ge=1, le=65535)
    token_env: str = Field("CRYPTORLPM_DASHBOARD_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the access token. Required (the daemon refuses
    to start without it) when ``host`` is not a loopback address; when set, every data request
    must carry it (``Authorization: Bearer <token>``), on loopback too."""
    refresh_s: float = Field(5.0, gt=0, le=3600)
    """How often the page asks for fresh data."""
    decisions: int = Field(20, ge=1, le=500)
    """Latest decisions shown."""
    refusals: int = Field(20, ge=1, le=500)
    """Latest guardrail refusals shown."""
    chart_points: int = Field(1000, ge=10, le=20_000)
    """Most points of the equity chart (a longer history is thinned evenly)."""


class UpdatingConfig(Section):
    """The Agent Updating Unit: scheduled retraining with a validation gate, and hot swaps."""

    enabled: bool = False
    every_days: float = Field(7.0, gt=0)
    """Retrain every coin's module this often (on the daemon's clock)."""
    train_days: int = Field(365, ge=30)
    """Length of the rolling training window that ends where validation starts."""
    validation_days: int = Field(60, ge=7)
    """Length of the validation window that ends at the retraining time."""
    tolerance: float = Field(0.02, ge=0)
    """A candidate replaces the active module only if its validation score is at least the
    active module's score on the same window minus this (net log return)."""
    seed: int = 1
    """Seed of the retraining runs."""
    gate_days: int = Field(14, ge=1)
    """The gate compares the candidate with the active module on these last days before the
    retraining time, a window the candidate was neither trained nor selected on: its checkpoint
    is chosen on the ``validation_days`` before them (so train, selection and gate windows are
    consecutive and disjoint)."""
    stress_scenarios: tuple[Literal["covid_crash", "luna_collapse", "flash_crash"], ...] = (
        "covid_crash",
        "luna_collapse",
        "flash_crash",
    )
    """Stress scenarios the candidate is replayed through, grafted onto the recent bars (a
    market-wide crash, a single-coin collapse, a flash crash); empty: no stress gate."""
    stress_days: int = Field(60, ge=7)
    """Days of recent bars each scenario is grafted onto (the scenario starts a fifth in)."""
    stress_max_drawdown: float = Field(0.35, gt=0, le=1)
    """A candidate whose drawdown in any scenario exceeds this is refused."""
    stress_max_loss: float = Field(0.25, gt=0, le=1)
    """A candidate that loses more than this share of its equity over any scenario's replay is
    refused."""


class ComputeConfig(Section):
    """Where trainings run: fanned out over a local process pool (default), run one after the
    other in this process, or sent as tasks to a Ray cluster. Results are identical on every
    backend (each training is seeded and uses one torch thread)."""

    backend: Literal["sequential", "process", "ray"] = "process"
    workers: int | None = Field(None, ge=1)
    """Parallel trainings (process pool size, or Ray CPUs of a local instance); None: every
    CPU this process may use (its affinity, capped by a container's CPU quota)."""
    address: str | None = None
    """Ray cluster address (e.g. ``ray://head:10001`` or ``auto``); None starts a local
    instance for the run."""


class MarsVariantConfig(Section):
    """One learned agent variant of a MARS ensemble: its risk threshold and penalty."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    """Short name (lower case, digits, underscores), shown in reports and journals."""
    threshold: float = Field(gt=0.0, le=1.0)
    """Safety threshold: holding the coin is masked (the variant holds cash) when its safety
    critic's estimate of the probability of a forward drawdown beyond ``[mars].drawdown``
    exceeds this. 1 never masks."""
    penalty: float = Field(ge=0.0)
    """Loss aversion in the training reward: a bar's loss while holding the coin counts
    ``1 + penalty`` times (0: the plain net log return)."""


class MarsControllerConfig(Section):
    """The meta-adaptive controller: weights over a coin's variants from regime features.

    It is fitted on realised net returns of the variants on bars their networks never trained
    on (each module's validation window and every bar traded since), never on the agents' own
    Q estimates, and refitted as that record grows."""

    fit: bool = True
    """False: never fitted, so the weights stay the uniform mix over the variants (the
    controller's ablation: what the ensemble does without it)."""
    every_bars: int = Field(4, ge=1)
    """The weights are recomputed every this many bars of a coin (held in between)."""
    refit_days: int = Field(30, ge=1)
    """Refit on the record every this many days (and at every new set of modules)."""
    lookback_days: int = Field(365, ge=7)
    """Records older than this are not used in a fit."""
    risk_aversion: float = Field(5.0, ge=0.0)
    """Weight of the downside semivariance of the blended sleeve's bar returns in the fit's
    objective (mean log return minus this times the mean squared negative log return,
    per bar, in percent units)."""
    l2: float = Field(0.05, ge=0.0)
    """Ridge penalty pulling the weights towards the uniform mix (strong when the record is
    short)."""
    steps: int = Field(300, ge=1)
    """Adam steps of one fit (deterministic, a fraction of a second)."""
    learning_rate: float = Field(0.05, gt=0.0)
    """Adam step size of a fit."""


class MarsManagerConfig(Section):
    """The manager of ``mars+manager``: the portfolio's gross exposure (0..1) from market-wide
    regime features, fitted like the controller on the realised record of the tactical
    allocation beneath it."""

    floor: float = Field(0.0, ge=0.0, lt=1.0)
    """Lowest gross exposure the manager may set."""
    initial: float = Field(0.9, gt=0.0, lt=1.0)
    """Gross exposure before the first fit and the prior a fit is pulled towards."""
    every_bars: int = Field(4, ge=1)
    """The exposure is recomputed every this many decisions."""
    risk_aversion: float = Field(5.0, ge=0.0)
    """As the controller's, on the portfolio's bar returns."""
    l2: float = Field(0.05, ge=0.0)
    """Ridge penalty pulling the manager towards ``initial``."""
    steps: int = Field(300, ge=1)
    """Adam steps of one fit."""
    learning_rate: float = Field(0.05, gt=0.0)
    """Adam step size of a fit."""


def _default_variants() -> tuple[MarsVariantConfig, ...]:
    ladder = (
        ("guarded", 0.25, 1.0),
        ("careful", 0.4, 0.5),
        ("balanced", 0.55, 0.25),
        ("bold", 0.7, 0.1),
        ("aggressive", 1.0, 0.0),
    )
    return tuple(MarsVariantConfig(name=n, threshold=t, penalty=p) for n, t, p in ladder)


class MarsConfig(Section):
    """MARS-style risk-profiled ensembles (``mars`` and ``mars+manager`` policies).

    Per coin, the learned ``variants`` (SAM-like DQN agents trained together as one batched
    network, each with a safety critic and its own threshold and penalty) plus the ``baselines``
    variants (cash, hold, trend filter), weighted by the meta-controller; the manager of
    ``mars+manager`` scales the whole portfolio. The learned variants use ``[agents]`` for the
    state window, environment and the SAM's DQN budget (``[agents.sam]``)."""

    variants: tuple[MarsVariantConfig, ...] = Field(default_factory=_default_variants)
    """Learned variants, from the most conservative to the most aggressive."""
    baselines: tuple[Literal["cash", "hold", "trend"], ...] = ("cash", "hold", "trend")
    """Rule variants in every ensemble, so the controller can always behave like a baseline:
    all cash, all coin, or the trend filter (coin while its close is above its
    ``[baselines].trend_days`` mean)."""
    drawdown: float = Field(0.10, gt=0.0, lt=1.0)
    """The safety critics' cost: the probability that holding the coin loses more than this
    (its lowest close over the next ``horizon_days`` below the current close by this much)."""
    horizon_days: float = Field(7.0, gt=0.0)
    """Horizon of that cost."""
    safety_weight: float = Field(1.0, gt=0.0)
    """Weight of the safety critics' loss (binary cross-entropy) beside the Q loss."""
    turnover_penalty: float = Field(0.0025, ge=0.0, lt=1.0)
    """Extra training cost per change of position of the learned variants (a learned
    hysteresis; see ``[agents].turnover_penalty``)."""
    double_dqn: bool = True
    """Train the learned variants with double DQN."""
    conservative: tuple[str, ...] = ("cash", "guarded", "careful")
    """Variants counted as conservative in reports and tests (names)."""
    rebalance_band: float = Field(0.05, ge=0.0, lt=1.0)
    """A coin's target weight moves only when it differs from the weight held by at least this
    share of equity (or goes to zero): small moves of the blend are not traded."""
    dru_components: int = Field(1, ge=0)
    """How many of a coin's refined on-chain components (the DRU's) the controller reads."""
    models: dict[str, str] = Field(default_factory=dict)
    """Live: the MARS module id per coin; a coin not listed uses its newest module under
    ``<[training].models_dir>/mars/<COIN>/``."""
    controller: MarsControllerConfig = MarsControllerConfig()
    manager: MarsManagerConfig = MarsManagerConfig()

    @model_validator(mode="after")
    def _check(self) -> MarsConfig:
        names = [v.name for v in self.variants] + list(self.baselines)
        if not self.variants:
            raise ValueError("variants must list at least one learned variant")
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        unknown = [c for c in self.conservative if c not in names]
        if unknown:
            raise ValueError(f"conservative names unknown variants {unknown}; known: {names}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """Every variant's name: the learned ones, then the rule variants."""
        return (*(v.name for v in self.variants), *self.baselines)


class BaselinesConfig(Section):
    """Parameters of the simple baselines every experiment compares with (never tuned on a
    test window)."""

    trend_days: int = Field(20, ge=1)
    """The trend filter holds a coin while its close is above its mean of the last this many
    days, else cash (equal weight over the coins)."""


class AppConfig(Section):
    """The whole configuration of one run or daemon."""

    data: DataConfig = DataConfig()
    market: MarketConfig = MarketConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    metrics: MetricsConfig = MetricsConfig()
    exchange: ExchangeConfig = ExchangeConfig()
    santiment: SantimentConfig = SantimentConfig()
    features: FeatureConfig = FeatureConfig()
    windows: WindowsConfig = WindowsConfig()
    broker: BrokerConfig = BrokerConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    agents: CryptoModuleParams = CryptoModuleParams()
    training: TrainingConfig = TrainingConfig()
    live: LiveConfig = LiveConfig()
    telegram: TelegramConfig = TelegramConfig()
    dashboard: DashboardConfig = DashboardConfig()
    updating: UpdatingConfig = UpdatingConfig()
    compute: ComputeConfig = ComputeConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    mars: MarsConfig = MarsConfig()


class Secrets(BaseSettings):
    """Credentials, read from the environment only (never from a config file).

    Variables: ``CRYPTORLPM_EXCHANGE_API_KEY``, ``CRYPTORLPM_EXCHANGE_SECRET``,
    ``CRYPTORLPM_TELEGRAM_TOKEN``, ``CRYPTORLPM_SANTIMENT_API_KEY``.
    """

    model_config = SettingsConfigDict(env_prefix="CRYPTORLPM_", extra="ignore", frozen=True)

    exchange_api_key: SecretStr | None = None
    exchange_secret: SecretStr | None = None
    telegram_token: SecretStr | None = None
    santiment_api_key: SecretStr | None = None
