"""The control service's contract: what an operator can ask a running daemon, any transport.

Telegram commands, the ``cryptorlpm live pause|resume|...`` CLI (over the daemon's control
socket) and tests all call the same :class:`Controls`; none of them touches the engine directly.
Every method answers plain data (JSON-serialisable dicts and lists) so any transport can carry it,
and raises :class:`ControlError` with a message meant for the operator when a request cannot be
done (an unknown coin, a module already plugged, ...).
"""

from __future__ import annotations

from typing import Any, Protocol


class ControlError(Exception):
    """A control request that cannot be done; the message is shown to the operator as is."""


class Controls(Protocol):
    """What an operator can ask of the running daemon."""

    async def status(self) -> dict[str, Any]:
        """``mode`` (paper|exchange), ``paused``, ``halted`` (reason or None), ``cycles``,
        ``last_cycle`` (ISO time or None), ``last_error`` (or None), ``equity``, ``quote``."""
        ...

    async def balance(self) -> dict[str, Any]:
        """``quote``, ``equity``, ``cash``, ``positions``: list of ``{coin, amount, price,
        value, weight}``."""
        ...

    async def weights(self) -> dict[str, Any]:
        """``target``: asset -> weight of the last decision (after the guardrails), ``actual``:
        asset -> current weight, ``ts``: ISO time of the decision (or None)."""
        ...

    async def modules(self) -> list[dict[str, Any]]:
        """Plugged modules: ``coin``, ``model_id``, ``ready``, ``last_decision`` (coin weight or
        None), ``pending`` (a swap waiting for the next cycle, or None); where known:
        ``validation`` (the model card's validation scores), ``created_at``, ``readiness``
        (``ready``, ``warming up`` or ``stale: ...``), ``last_bar`` (ISO), ``retraining``,
        ``retraining_since`` (ISO), ``last_retrain`` (the last verdict), ``diagnostics``
        (``decisions``, ``in_coin``, ``flip_rate``, ``last_flip``)."""
        ...

    async def audit(self, closes: int = 5) -> dict[str, Any]:
        """The guardrail audit of the latest ``closes`` closes at which the guardrails changed a
        weight or trimmed an order: ``closes`` (oldest first; each ``ts``, ``source``,
        ``changes``: ``asset``, ``wanted``, ``allowed``, ``rules``; ``trims``: ``coin``,
        ``side``, ``wanted``, ``planned``, ``reason``; ``orders``), ``scanned`` (decisions
        looked at), ``since`` (ISO of the oldest one)."""
        ...

    async def regime(self) -> dict[str, Any]:
        """Optional (a transport asks ``getattr`` first). The running policy's regime
        controller: ``policy`` (its name), ``controller`` (whether it has one: a policy with a
        ``regime_state() -> dict | None`` method), ``state`` (what that returns: by
        convention ``variants`` coin -> variant -> weight, ``exposure`` the manager's gross
        exposure (0..1), ``features`` name -> value of the regime features known now, ``ts``;
        None before its first decision)."""
        ...

    async def pause(self) -> str:
        """Stop sending new orders (decisions go on); answers a confirmation line."""
        ...

    async def resume(self) -> str:
        """Send orders again (also clears a tripped kill switch); answers a confirmation line."""
        ...

    async def flatten(self) -> str:
        """Sell every coin at the next decision, then halt until resumed (a manual kill
        switch); answers a confirmation line."""
        ...

    async def stop(self) -> str:
        """Stop the daemon gracefully after the current cycle; answers a confirmation line."""
        ...

    async def retrain(self, coin: str) -> str:
        """Start retraining ``coin``'s module now (the validation gate decides the swap)."""
        ...

    async def plug(self, coin: str, model_id: str | None = None) -> str:
        """Plug ``coin``'s module (``model_id`` or the registry's active one) at the next cycle."""
        ...

    async def preview_plug(self, coin: str, model_id: str | None = None) -> str:
        """What :meth:`plug` would change (one message), changing nothing; raises
        ``ControlError`` when the plug would be refused (an unknown coin or model)."""
        ...

    async def preview_unplug(self, coin: str) -> str:
        """What :meth:`unplug` would change (one message), changing nothing; raises
        ``ControlError`` when the unplug would be refused (no such module plugged)."""
        ...

    async def unplug(self, coin: str) -> str:
        """Unplug ``coin``'s module at the next cycle; its holding is sold by the rebalance."""
        ...

    async def rollback(self, coin: str) -> str:
        """Re-activate ``coin``'s previous module version and swap it in at the next cycle."""
        ...

    async def why(self, coin: str) -> dict[str, Any]:
        """The latest explained decision of ``coin``: ``coin``, ``ts`` (ISO time), ``action``,
        ``q`` (action -> Q-value), ``top`` (``[[input, attribution], ...]``, largest first),
        ``weight`` (the coin's target weight after the guardrails) and the rest of the
        policy's explanation (``model_id``, ``position``, ``pcs``, ``eam``, ...)."""
        ...
