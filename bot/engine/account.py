"""The account: cash, holdings and last prices, booked from fills and marked at each close.

In a backtest the account is the truth; in live trading it mirrors the exchange and is reconciled
with its balances. It never decides anything: it answers "what do we hold, what is it worth".
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.events import Bar, OrderFilled, PortfolioValued

SYMBOL_COINS: dict[str, str] = {}
"""``coin_of``'s memo: symbol -> base asset (read directly on the engine's hot path)."""


def coin_of(symbol: str) -> str:
    """Base asset of a ccxt symbol: ``"BTC/USDT"`` -> ``"BTC"`` (memoised: a hot path)."""
    coin = SYMBOL_COINS.get(symbol)
    if coin is None:
        coin = SYMBOL_COINS[symbol] = symbol.split("/", 1)[0]
    return coin


class Account:
    """Cash and holdings in one quote currency, with running fee and turnover totals."""

    def __init__(
        self,
        quote: str,
        cash: float,
        holdings: Mapping[str, float] | None = None,
    ) -> None:
        self.quote = quote
        self.cash = float(cash)
        self.holdings: dict[str, float] = dict(holdings or {})
        self.prices: dict[str, float] = {}
        self.last_bars: dict[str, Bar] = {}
        """Latest bar of each coin (its ``ts`` is the close): what the stale-data check reads."""
        self.fees_paid = 0.0
        self.traded_notional = 0.0
        self.fills = 0

    def on_bar(self, bar: Bar) -> None:
        """Remember the latest bar and close of the bar's coin (a hot path: two stores)."""
        symbol = bar.symbol
        coin = SYMBOL_COINS.get(symbol) or coin_of(symbol)
        self.prices[coin] = bar.close
        self.last_bars[coin] = bar

    def on_fill(self, fill: OrderFilled) -> None:
        """Book a fill: move cash and coin, charge the fee in the asset it was paid in."""
        coin = coin_of(fill.symbol)
        notional = fill.amount * fill.price
        if fill.side == "buy":
            self.cash -= notional
            self.holdings[coin] = self.holdings.get(coin, 0.0) + fill.amount
        else:
            self.cash += notional
            self.holdings[coin] = self.holdings.get(coin, 0.0) - fill.amount
        fee_asset = fill.fee_asset
        if fee_asset == self.quote:
            self.cash -= fill.fee
            value = fill.fee
        else:
            # Paid in the coin itself, or in another asset (BNB): a coin of the portfolio loses
            # it; an asset outside the portfolio is not part of the account's equity.
            if fee_asset in self.holdings or fee_asset == coin:
                self.holdings[fee_asset] = self.holdings.get(fee_asset, 0.0) - fill.fee
            value = fill.fee * (
                fill.price if fee_asset == coin else self.prices.get(fee_asset, 0.0)
            )
        self.fees_paid += value if fill.fee_quote is None else fill.fee_quote
        self.traded_notional += notional
        self.fills += 1

    def equity(self) -> float:
        """Cash plus every holding at its last price."""
        equity, prices = self.cash, self.prices
        for coin, amount in self.holdings.items():  # a loop: cheaper than sum() on a hot path
            if amount:
                equity += amount * prices.get(coin, 0.0)
        return equity

    def weights(self) -> dict[str, float]:
        """Share of equity per asset, the quote currency included (empty when equity <= 0)."""
        equity = self.equity()
        if equity <= 0:
            return {}
        weights = {self.quote: self.cash / equity}
        for coin, amount in self.holdings.items():
            weights[coin] = amount * self.prices.get(coin, 0.0) / equity
        return weights

    def valuation(self, ts: int) -> PortfolioValued:
        """The ``PortfolioValued`` event of the current state (coins in first-held order)."""
        prices = self.prices
        equity = self.cash
        for coin, amount in self.holdings.items():
            equity += amount * prices.get(coin, 0.0)
        return PortfolioValued(
            ts, equity, self.cash, tuple(self.holdings.items()), tuple(prices.items())
        )
