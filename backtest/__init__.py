"""Backtesting: replay driver, simulated broker, metrics, baselines, reports."""
