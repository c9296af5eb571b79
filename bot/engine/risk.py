"""The risk gate: guardrails between what a policy wants and what reaches the exchange.

The gate lives outside every network and no policy can override it. Each change it makes is a
``RiskRefusal`` event naming the rule, the asset, what was wanted and what was allowed.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.events import RiskRefusal
from config.schema import RiskConfig


class RiskGate:
    """Applies the weight guardrails of :class:`~config.schema.RiskConfig`."""

    def __init__(self, cfg: RiskConfig, quote: str) -> None:
        self.cfg = cfg
        self.quote = quote

    def review_weights(
        self, ts: int, wanted: Mapping[str, float]
    ) -> tuple[dict[str, float], list[RiskRefusal]]:
        """Clamp ``wanted`` (asset -> weight, quote included) to the guardrails.

        Weights are first made valid (negative -> 0, normalised to sum 1); each coin is capped at
        ``max_weight_per_coin``; coins are scaled down together until cash is at least
        ``min_cash``. What is taken from coins goes to cash.
        """
        refusals: list[RiskRefusal] = []
        weights = {asset: max(0.0, float(w)) for asset, w in wanted.items()}
        total = sum(weights.values())
        if total <= 0:
            return {self.quote: 1.0}, refusals
        weights = {asset: w / total for asset, w in weights.items()}
        cap = self.cfg.max_weight_per_coin
        for asset, weight in list(weights.items()):
            if asset != self.quote and weight > cap + 1e-12:
                refusals.append(
                    RiskRefusal(ts, "max_weight_per_coin", asset, weight, cap, f"cap {cap:.2%}")
                )
                weights[asset] = cap
        coins = sum(w for asset, w in weights.items() if asset != self.quote)
        room = 1.0 - self.cfg.min_cash
        if coins > room + 1e-12:
            scale = room / coins
            for asset in weights:
                if asset != self.quote:
                    allowed = weights[asset] * scale
                    refusals.append(
                        RiskRefusal(
                            ts,
                            "min_cash",
                            asset,
                            weights[asset],
                            allowed,
                            f"keep {self.cfg.min_cash:.2%} in {self.quote}",
                        )
                    )
                    weights[asset] = allowed
            coins = room
        weights[self.quote] = 1.0 - coins
        return weights, refusals
