"""Alert and reply texts: pure functions of events and control answers."""

from __future__ import annotations

from bot.events import OrderFilled, OrderRejected, RiskRefusal
from bot.telegram import format as fmt
from bot.telegram.summary import DaySummary

TS = 1_704_191_400_000  # 2024-01-02 10:30 UTC


def test_fill_reads_side_amount_symbol_price_and_fee() -> None:
    fill = OrderFilled(TS, "c-1", "BTC/USDT", "buy", 0.0123, 43_210.0, 0.5315, "USDT")
    text = fmt.format_fill(fill)
    assert text.splitlines()[0] == "BUY 0.0123 BTC/USDT @ 43,210.00, fee 0.5315 USDT"
    assert "value 531.48 USDT" in text
    assert "order c-1" in text
    assert "2024-01-02 10:30 UTC" in text


def test_rejection_carries_the_reason() -> None:
    rejected = OrderRejected(TS, "c-2", "ETH/USDT", "sell", 0.5, "insufficient balance")
    text = fmt.format_rejection(rejected)
    assert text.startswith("Order rejected: SELL 0.5 ETH/USDT: insufficient balance")
    assert "order c-2" in text


def test_refusal_shows_rule_asset_wanted_allowed_and_detail() -> None:
    refusal = RiskRefusal(TS, "max_weight", "BTC", 0.6, 0.4, "cap 40% per coin")
    lines = fmt.format_refusal(refusal).splitlines()
    assert lines[0] == "Risk refusal (max_weight) BTC: wanted 0.6 → allowed 0.4"
    assert lines[1] == "cap 40% per coin"
    assert lines[2] == "2024-01-02 10:30 UTC"


def test_numbers_are_readable() -> None:
    assert fmt.fmt_price(43_210) == "43,210.00"
    assert fmt.fmt_price(0.00012346) == "0.0001235"
    assert fmt.fmt_price(0.0) == "0.00"
    assert fmt.fmt_amount(0.01230000) == "0.0123"
    assert fmt.fmt_amount(1250.0) == "1,250"
    assert fmt.fmt_amount(1e-10) == "0"
    assert fmt.fmt_money(None) == "n/a"
    assert fmt.fmt_money("x") == "x"
    assert fmt.fmt_money(float("nan")) == "nan"
    assert fmt.fmt_pct(0.521) == "52.1%"
    assert fmt.fmt_pct(-0.0123, signed=True) == "-1.23%"


def test_long_texts_are_cut_to_telegrams_limit() -> None:
    text = fmt.format_error("x" * 10_000)
    assert len(text) == fmt.MAX_TEXT
    assert text.startswith("ERROR: ")
    assert text.endswith("…")


def test_start_and_stop_messages() -> None:
    assert fmt.format_started("paper, BTC ETH") == "cryptorlpm started\npaper, BTC ETH"
    assert fmt.format_stopped("") == "cryptorlpm stopped"


def test_status_reply() -> None:
    text = fmt.format_status(
        {
            "mode": "paper",
            "paused": True,
            "halted": None,
            "cycles": 12,
            "last_cycle": "2024-01-02T10:30:00+00:00",
            "last_error": None,
            "equity": 10_234.5,
            "quote": "USDT",
            "uptime": "3h",
        }
    )
    assert text.splitlines() == [
        "Status: paused",
        "Mode: paper",
        "Equity: 10,234.50 USDT",
        "Cycles: 12 (last 2024-01-02T10:30:00+00:00)",
        "Last error: none",
        "uptime: 3h",
    ]
    inputs = fmt.format_status(
        {
            "trading": [
                "BTC not ready: metric mvrv has no value since 2024-02-27; its vote counts as cash"
            ],
            "inputs": ["BTC: bar 2024-03-01 00:05 (websocket); BTC:mvrv 2024-02-27 (santiment)"],
        }
    )
    assert inputs.splitlines()[-2:] == [
        "BTC not ready: metric mvrv has no value since 2024-02-27; its vote counts as cash",
        "BTC: bar 2024-03-01 00:05 (websocket); BTC:mvrv 2024-02-27 (santiment)",
    ]
    halted = fmt.format_status({"halted": "drawdown 25% > 20%", "paused": True})
    assert halted.startswith("Status: HALTED: drawdown 25% > 20%")


def test_balance_reply_lists_positions_with_value_and_weight() -> None:
    text = fmt.format_balance(
        {
            "quote": "USDT",
            "equity": 10_000.0,
            "cash": 2_000.0,
            "positions": [
                {
                    "coin": "BTC",
                    "amount": 0.1,
                    "price": 43_210.0,
                    "value": 4_321.0,
                    "weight": 0.4321,
                }
            ],
        }
    )
    assert text.splitlines() == [
        "Equity 10,000.00 USDT",
        "Cash 2,000.00 USDT (20.0%)",
        "BTC 0.1 @ 43,210.00 = 4,321.00 USDT (43.2%)",
    ]
    empty = fmt.format_balance({"quote": "USDT", "equity": 0.0, "cash": 0.0, "positions": []})
    assert empty.endswith("No coins held.")


def test_weights_reply_joins_target_and_actual() -> None:
    text = fmt.format_weights(
        {"target": {"BTC": 0.5, "USDT": 0.5}, "actual": {"BTC": 0.45, "ETH": 0.05}, "ts": "t0"}
    )
    assert text.splitlines() == [
        "Weights (decision t0)",
        "BTC: target 50.0%, actual 45.0%",
        "USDT: target 50.0%, actual -",
        "ETH: target -, actual 5.0%",
    ]
    assert fmt.format_weights({"target": {}, "actual": {}, "ts": None}).splitlines() == [
        "Weights (no decision yet)",
        "No weights.",
    ]


def test_modules_reply() -> None:
    assert fmt.format_modules([]) == "No modules plugged."
    text = fmt.format_modules(
        [
            {
                "coin": "BTC",
                "model_id": "btc-7",
                "ready": True,
                "last_decision": 1.0,
                "pending": None,
            },
            {
                "coin": "ETH",
                "model_id": "eth-2",
                "ready": False,
                "last_decision": None,
                "pending": "swap to eth-3",
            },
        ]
    )
    assert text.splitlines() == [
        "Modules (2)",
        "BTC: btc-7, ready, last weight 100.0%",
        "ETH: eth-2, not ready, no decision yet, pending: swap to eth-3",
    ]


def test_daily_summary_text() -> None:
    day = 86_400_000
    summary = DaySummary(TS - day, TS, 10_000.0, 10_250.0, 3, 1, ((TS - day, 1e4), (TS, 10_250.0)))
    text = fmt.format_summary(summary, "USDT")
    assert text.splitlines() == [
        "Daily summary 2024-01-02 10:30 UTC",
        "Equity 10,250.00 USDT (+2.50%, +250.00 USDT)",
        "since 2024-01-01 10:30 UTC",
        "Fills: 3, risk refusals: 1",
    ]
    with_inputs = fmt.format_summary(summary, "USDT", ["BTC: bar 2024-01-02 10:30 (REST)"])
    assert with_inputs.splitlines()[-1] == "BTC: bar 2024-01-02 10:30 (REST)"
    loss = fmt.format_summary(DaySummary(TS - day, TS, 100.0, 90.0, 0, 0, ()), "USDT")
    assert "(-10.00%, -10.00 USDT)" in loss


def test_help_lists_every_command() -> None:
    text = fmt.format_help()
    for name, _, _ in fmt.COMMANDS:
        assert f"/{name}" in text
    assert "/plug COIN [MODEL_ID] - " in text
