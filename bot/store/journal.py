"""``state.db``: the daemon's crash-safe journal of cycles, orders, refusals and balances.

Write-ahead rule: a cycle's whole order plan is committed (``planned``) before the first order is
sent, and each order is marked ``sending`` (committed) before its request leaves. Whatever
instant the process dies at, a restart finds every order it may have sent, asks the exchange
about those it does not know the fate of, and never sends one twice (see
:mod:`bot.live.reconcile`). The database runs with ``synchronous=FULL``: a commit survives a
power cut, not only a crash.

Order states: ``planned`` (journalled, not sent) -> ``sending`` (request may have left) ->
``open`` / ``partially_filled`` (on the book) -> ``filled`` | ``canceled`` | ``expired`` |
``rejected``. ``unknown``: a request may have reached the exchange but its fate could not be
learnt (timeouts, -1007, 5xx, lookups failing); such an order is never sent again and blocks
its coin until the exchange's own record settles it (``next_check_ms``, ``checks``).
``abandoned`` is a planned order never sent (its cycle became too old, or the exchange proved
it never received it once its cycle had passed). ``booked`` is the amount already published to
the engine as ``OrderFilled``, so a fill is booked once whatever the number of restarts.
``sent_ms`` is the exchange time of the last request's departure: a request signed then cannot
be accepted after ``sent_ms + recvWindow``, which bounds how long an order can stay unknown.

Nothing secret is ever written here: no API key, no signature, no request URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.engine.step import StepResult
from bot.events import (
    OperatorCommand,
    PauseTrading,
    ResumeTrading,
    RiskRefusal,
    SubmitOrder,
)
from bot.store.sqlite import SqliteStore

OPEN_STATES = ("planned", "sending", "unknown", "open", "partially_filled")
"""Orders whose fate is not settled yet."""
UNSETTLED_STATES = ("sending", "unknown", "open", "partially_filled")
"""Orders that may be on the exchange and whose end is not known."""
FINAL_STATES = ("filled", "canceled", "expired", "rejected", "abandoned")

_MIGRATIONS = (
    """
    CREATE TABLE cycles (
        ts INTEGER PRIMARY KEY,           -- the bar close the cycle decides at (exchange ms)
        started_ms INTEGER NOT NULL,      -- exchange time the cycle started
        status TEXT NOT NULL,             -- running | planned | done | failed | abandoned
        orders INTEGER NOT NULL DEFAULT 0,
        equity REAL,
        latency_ms REAL,                  -- cycle start to the last order's answer (wall ms)
        error TEXT,
        finished_ms INTEGER
    );
    CREATE TABLE orders (
        client_order_id TEXT PRIMARY KEY,
        cycle_ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        amount REAL NOT NULL,
        order_type TEXT NOT NULL,
        limit_price REAL,
        reference_price REAL NOT NULL,
        status TEXT NOT NULL,
        exchange_order_id TEXT,
        filled REAL NOT NULL DEFAULT 0,
        average_price REAL,
        fee REAL NOT NULL DEFAULT 0,
        fee_asset TEXT,
        booked REAL NOT NULL DEFAULT 0,
        reason TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX orders_by_cycle ON orders (cycle_ts, seq);
    CREATE INDEX orders_by_status ON orders (status);
    CREATE TABLE refusals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        rule TEXT NOT NULL,
        asset TEXT NOT NULL,
        wanted REAL NOT NULL,
        allowed REAL NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE balances (
        asset TEXT PRIMARY KEY,
        total REAL NOT NULL,
        free REAL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    ALTER TABLE orders ADD COLUMN sent_ms INTEGER;      -- exchange ms the last request left
    ALTER TABLE orders ADD COLUMN next_check_ms INTEGER; -- unknown: when to ask the exchange again
    ALTER TABLE orders ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE orders ADD COLUMN fee_quote REAL;       -- every commission, in the quote currency
    ALTER TABLE orders ADD COLUMN fees TEXT;            -- JSON {asset: commission}
    """,
    """
    CREATE TABLE decisions (
        ts INTEGER PRIMARY KEY,           -- the close decided at
        source TEXT,                      -- the policy (NULL: no new target)
        target TEXT,                      -- JSON [[asset, weight], ...] the policy wanted
        equity REAL NOT NULL,             -- mark-to-market before the orders
        orders TEXT NOT NULL,             -- JSON [client order id, ...] of the step's plan
        refusals TEXT NOT NULL            -- JSON [[rule, asset, wanted, allowed], ...]
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,              -- exchange ms the operator asked
        command TEXT NOT NULL,            -- PauseTrading | ResumeTrading | FlattenPositions
        by TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE decisions ADD COLUMN inputs TEXT;  -- JSON: what the decision read (live diff)
    """,
    """
    ALTER TABLE decisions ADD COLUMN allowed TEXT;  -- JSON [[asset, weight], ...] after the gate
    ALTER TABLE decisions ADD COLUMN trims TEXT;    -- JSON [[coin, side, wanted, planned, why]]
    """,
    """
    ALTER TABLE orders ADD COLUMN send_at_ms INTEGER;  -- a slice: not to be sent before
    """,
    """
    ALTER TABLE decisions ADD COLUMN explanation TEXT;  -- JSON {coin: {action, q, top, ...}}
    """,
)


@dataclass(frozen=True)
class JournalOrder:
    """One row of the ``orders`` table."""

    client_order_id: str
    cycle_ts: int
    seq: int
    symbol: str
    side: str
    amount: float
    order_type: str
    limit_price: float | None
    reference_price: float
    status: str
    exchange_order_id: str | None
    filled: float
    average_price: float | None
    fee: float
    fee_asset: str | None
    booked: float
    reason: str | None
    sent_ms: int | None = None
    next_check_ms: int | None = None
    checks: int = 0
    fee_quote: float | None = None
    fees: str | None = None
    send_at_ms: int | None = None

    @property
    def coin(self) -> str:
        """The traded coin (the symbol's base asset)."""
        return self.symbol.split("/", 1)[0]

    def submit_order(self) -> SubmitOrder:
        """The command this row journals."""
        return SubmitOrder(
            self.cycle_ts,
            self.client_order_id,
            self.symbol,
            self.side,
            self.amount,
            self.order_type,
            self.limit_price,
            self.reference_price,
        )


_ORDER_COLUMNS = ", ".join(JournalOrder.__dataclass_fields__)


class Journal(SqliteStore):
    """The ``state.db`` of one daemon. Open with ``await Journal.open(path)``; its commits run
    with ``synchronous=FULL``."""

    MIGRATIONS = _MIGRATIONS
    SYNCHRONOUS = "FULL"

    # -- cycles ---------------------------------------------------------------------------------

    async def start_cycle(self, ts: int, started_ms: int) -> None:
        """Record that the cycle deciding at ``ts`` began (a restarted cycle keeps its row)."""
        await self._db.execute(
            "INSERT INTO cycles (ts, started_ms, status) VALUES (?, ?, 'running') "
            "ON CONFLICT (ts) DO UPDATE SET status = 'running', error = NULL",
            (ts, started_ms),
        )
        await self._db.commit()

    async def plan_cycle(
        self,
        ts: int,
        orders: Sequence[SubmitOrder],
        now_ms: int,
        send_at: dict[str, int] | None = None,
    ) -> None:
        """Journal the cycle's whole plan in one transaction, before anything is sent.

        ``send_at``: client id -> exchange time a slice is not to be sent before. Orders
        already journalled under the same client id (a resumed cycle) are kept as they are: the
        plan of a cycle is written once.
        """
        send_at = send_at or {}
        rows = [
            (
                o.client_order_id,
                ts,
                seq,
                o.symbol,
                o.side,
                float(o.amount),
                o.order_type,
                o.limit_price,
                float(o.reference_price),
                now_ms,
                now_ms,
                send_at.get(o.client_order_id),
            )
            for seq, o in enumerate(orders)
        ]
        await self._db.executemany(
            "INSERT OR IGNORE INTO orders (client_order_id, cycle_ts, seq, symbol, side, amount,"
            " order_type, limit_price, reference_price, status, created_ms, updated_ms,"
            " send_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?)",
            rows,
        )
        await self._db.execute(
            "UPDATE cycles SET status = 'planned', orders = ? WHERE ts = ?", (len(orders), ts)
        )
        await self._db.commit()

    async def finish_cycle(
        self,
        ts: int,
        status: str,
        finished_ms: int,
        *,
        equity: float | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        """Close the cycle's row (``done``, ``failed`` or ``abandoned``)."""
        await self._db.execute(
            "UPDATE cycles SET status = ?, finished_ms = ?, equity = COALESCE(?, equity),"
            " latency_ms = COALESCE(?, latency_ms), error = ? WHERE ts = ?",
            (status, finished_ms, equity, latency_ms, error, ts),
        )
        await self._db.commit()

    async def unfinished_cycles(self) -> dict[int, str]:
        """Cycles that started and did not finish -> ``running`` (no plan journalled yet) or
        ``planned``, oldest first."""
        async with self._db.execute(
            "SELECT ts, status FROM cycles WHERE status IN ('running', 'planned') ORDER BY ts"
        ) as cursor:
            return {int(ts): str(status) async for ts, status in cursor}

    async def last_cycle(self) -> dict[str, Any] | None:
        """The latest cycle row as a dict, or None."""
        rows = await self._select_dicts("SELECT * FROM cycles ORDER BY ts DESC LIMIT 1")
        return rows[0] if rows else None

    async def cycles(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Cycle rows, oldest first (the last ``limit`` when given)."""
        query = "SELECT * FROM cycles ORDER BY ts DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return list(reversed(await self._select_dicts(query)))

    # -- orders ---------------------------------------------------------------------------------

    async def mark_sending(self, client_order_id: str, now_ms: int) -> None:
        """Committed before the order's request leaves: from now on its fate must be asked."""
        await self._set(client_order_id, now_ms, status="sending", sent_ms=now_ms)

    async def mark_unknown(
        self, client_order_id: str, now_ms: int, *, next_check_ms: int, checks: int, reason: str
    ) -> None:
        """The order may be on the exchange and nobody can say: ask again at ``next_check_ms``."""
        await self._set(
            client_order_id,
            now_ms,
            status="unknown",
            next_check_ms=next_check_ms,
            checks=checks,
            reason=reason,
        )

    async def unknown_orders(self) -> list[JournalOrder]:
        """Orders of unknown fate, oldest first."""
        return await self._orders("WHERE status = 'unknown' ORDER BY cycle_ts, seq", ())

    async def unsettled_orders(self) -> list[JournalOrder]:
        """Orders that may be on the exchange with no known end (sending, unknown, open)."""
        marks = ", ".join("?" * len(UNSETTLED_STATES))
        return await self._orders(
            f"WHERE status IN ({marks}) ORDER BY cycle_ts, seq", UNSETTLED_STATES
        )

    async def record(
        self,
        client_order_id: str,
        now_ms: int,
        *,
        status: str,
        filled: float | None = None,
        average_price: float | None = None,
        fee: float | None = None,
        fee_asset: str | None = None,
        exchange_order_id: str | None = None,
        reason: str | None = None,
        booked: float | None = None,
        fee_quote: float | None = None,
        fees: dict[str, float] | None = None,
    ) -> None:
        """Store what the exchange said about an order (fields left None keep their value);
        ``booked``: the filled amount the engine is told about with this outcome."""
        await self._set(
            client_order_id,
            now_ms,
            status=status,
            filled=filled,
            average_price=average_price,
            fee=fee,
            fee_asset=fee_asset,
            exchange_order_id=exchange_order_id,
            reason=reason,
            booked=booked,
            fee_quote=fee_quote,
            fees=None if fees is None else json.dumps(fees, sort_keys=True),
        )

    async def mark_all_booked(self) -> None:
        """Every fill so far is in the account (rebuilt from balances): nothing left to book."""
        await self._db.execute("UPDATE orders SET booked = filled WHERE booked != filled")
        await self._db.commit()

    async def _set(self, client_order_id: str, now_ms: int, **fields: Any) -> None:
        values = {k: v for k, v in fields.items() if v is not None}
        assignments = ", ".join(f"{k} = ?" for k in values)
        cursor = await self._db.execute(
            f"UPDATE orders SET {assignments}, updated_ms = ? WHERE client_order_id = ?",
            (*values.values(), now_ms, client_order_id),
        )
        if cursor.rowcount != 1:
            raise KeyError(f"state.db has no order {client_order_id!r}")
        await self._db.commit()

    async def order(self, client_order_id: str) -> JournalOrder | None:
        """One order by client id."""
        rows = await self._orders("WHERE client_order_id = ?", (client_order_id,))
        return rows[0] if rows else None

    async def open_orders(self) -> list[JournalOrder]:
        """Orders whose fate is not settled (planned, sending, open), by cycle and sequence."""
        marks = ", ".join("?" * len(OPEN_STATES))
        return await self._orders(f"WHERE status IN ({marks}) ORDER BY cycle_ts, seq", OPEN_STATES)

    async def cycle_orders(self, ts: int) -> list[JournalOrder]:
        """The plan of cycle ``ts`` in sending order."""
        return await self._orders("WHERE cycle_ts = ? ORDER BY seq", (ts,))

    async def orders(self, limit: int | None = None) -> list[JournalOrder]:
        """Every order, oldest first (the last ``limit`` when given)."""
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = await self._orders("ORDER BY cycle_ts DESC, seq DESC" + tail, ())
        return list(reversed(rows))

    async def _orders(self, where: str, params: Sequence[Any]) -> list[JournalOrder]:
        async with self._db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders {where}", params) as c:
            return [JournalOrder(*row) async for row in c]

    # -- decisions ------------------------------------------------------------------------------

    async def record_decision(
        self, result: StepResult, inputs: dict[str, Any] | None = None
    ) -> None:
        """Keep what the engine's step decided at a close: the target, the weights the
        guardrails allowed and the rules that changed them, the orders and what the filters
        trimmed (the audit trail), and what it read (``inputs``: the latest bar of each coin,
        the metrics received, the modules that decided), for ``cryptorlpm live diff``."""
        target = result.target
        await self._db.execute(
            "INSERT INTO decisions"
            " (ts, source, target, equity, orders, refusals, inputs, allowed, trims)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ts) DO UPDATE SET"
            " source = excluded.source, target = excluded.target, equity = excluded.equity,"
            " orders = excluded.orders, refusals = excluded.refusals, inputs = excluded.inputs,"
            " allowed = excluded.allowed, trims = excluded.trims",
            (
                result.ts,
                None if target is None else target.source,
                None if target is None else json.dumps([list(w) for w in target.weights]),
                float(result.equity),
                json.dumps([o.client_order_id for o in result.orders]),
                json.dumps([[r.rule, r.asset, r.wanted, r.allowed] for r in result.refusals]),
                None if inputs is None else json.dumps(inputs, sort_keys=True),
                None if result.allowed is None else json.dumps([list(w) for w in result.allowed]),
                json.dumps([list(t) for t in result.trims]),
            ),
        )
        await self._db.commit()

    async def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Every journalled decision (the latest ``limit`` when given), oldest first (JSON
        fields decoded)."""
        if limit is None:
            rows = await self._select_dicts("SELECT * FROM decisions ORDER BY ts")
        else:
            rows = await self._select_dicts(
                f"SELECT * FROM decisions ORDER BY ts DESC LIMIT {max(0, int(limit))}"
            )
            rows.reverse()
        for row in rows:
            for key in (
                "target",
                "orders",
                "refusals",
                "inputs",
                "allowed",
                "trims",
                "explanation",
            ):
                row[key] = None if row[key] is None else json.loads(row[key])
        return rows

    async def record_explanation(self, ts: int, explanation: dict[str, Any]) -> None:
        """Keep why the policy decided what it did at the close ``ts`` (its ``explain(ts)``:
        for the Crypto Module vote ``{coin: {action, q, top: [[input, attribution], ...],
        ...}}``) on that decision's row (recorded first by :meth:`record_decision`)."""
        await self._db.execute(
            "UPDATE decisions SET explanation = ? WHERE ts = ?",
            (json.dumps(explanation, sort_keys=True, allow_nan=False), int(ts)),
        )
        await self._db.commit()

    async def explanations(
        self, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(ts, explanation)`` of every explained decision with ``start <= ts <= end``,
        oldest first."""
        query = "SELECT ts, explanation FROM decisions WHERE explanation IS NOT NULL"
        params: list[int] = []
        if start_ms is not None:
            query += " AND ts >= ?"
            params.append(int(start_ms))
        if end_ms is not None:
            query += " AND ts <= ?"
            params.append(int(end_ms))
        async with self._db.execute(query + " ORDER BY ts", params) as cursor:
            return [(int(ts), json.loads(text)) async for ts, text in cursor]

    async def latest_explanation(self, key: str) -> dict[str, Any] | None:
        """The latest decision that explained ``key`` (a coin): ``ts``, ``target`` and
        ``allowed`` (``{asset: weight}``) and ``explanation`` (its entry for ``key``); None
        when no decision did."""
        if '"' in key or "\\" in key:
            return None
        path = f'$."{key}"'
        async with self._db.execute(
            "SELECT ts, target, allowed, json_extract(explanation, ?) FROM decisions"
            " WHERE json_extract(explanation, ?) IS NOT NULL ORDER BY ts DESC LIMIT 1",
            (path, path),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        ts, target, allowed, entry = row
        return {
            "ts": int(ts),
            "target": dict(json.loads(target)) if target else {},
            "allowed": dict(json.loads(allowed)) if allowed else {},
            "explanation": json.loads(entry),
        }

    async def record_command(self, command: OperatorCommand) -> None:
        """Keep an operator command, in the order it was applied (and the pause it leaves)."""
        await self._db.execute(
            "INSERT INTO commands (ts, command, by) VALUES (?, ?, ?)",
            (command.ts, type(command).__name__, command.by),
        )
        if isinstance(command, PauseTrading | ResumeTrading):
            await self._db.execute(
                "INSERT INTO kv (key, value) VALUES ('paused', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(isinstance(command, PauseTrading)),),
            )
        await self._db.commit()

    async def commands(self) -> list[dict[str, Any]]:
        """Every operator command, in order."""
        return await self._select_dicts("SELECT ts, command, by FROM commands ORDER BY id")

    # -- refusals, balances, key-values -----------------------------------------------------------

    async def add_refusals(self, refusals: Iterable[RiskRefusal]) -> None:
        """Keep guardrail refusals (one transaction)."""
        rows = [tuple(r) for r in refusals]
        if rows:
            await self._db.executemany(
                "INSERT INTO refusals (ts, rule, asset, wanted, allowed, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            await self._db.commit()

    async def refusals(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest refusals, oldest first."""
        rows = await self._select_dicts(
            f"SELECT ts, rule, asset, wanted, allowed, detail FROM refusals"
            f" ORDER BY id DESC LIMIT {int(limit)}"
        )
        return list(reversed(rows))

    async def set_balances(self, totals: dict[str, float], now_ms: int) -> None:
        """Replace the balance snapshot (asset -> total held)."""
        await self._db.execute("DELETE FROM balances")
        await self._db.executemany(
            "INSERT INTO balances (asset, total, updated_ms) VALUES (?, ?, ?)",
            [(asset, float(total), now_ms) for asset, total in sorted(totals.items())],
        )
        await self._db.commit()

    async def balances(self) -> dict[str, float]:
        """The last balance snapshot (asset -> total)."""
        async with self._db.execute("SELECT asset, total FROM balances ORDER BY asset") as c:
            return {str(a): float(t) async for a, t in c}

    async def put(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key``."""
        await self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
        await self._db.commit()

    async def get(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return default if row is None else json.loads(row[0])

    async def _select_dicts(self, query: str) -> list[dict[str, Any]]:
        async with self._db.execute(query) as cursor:
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) async for row in cursor]
