"""Tests of the backtest package: metrics and reports."""
