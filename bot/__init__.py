"""Runtime of CryptoRLPM: events, bus, clocks, stores, data feed, executors and the CLI."""
