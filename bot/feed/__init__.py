"""The Data Feed Unit: candle and metric sources (ccxt, sanpy, CSV, the synthetic market)."""
