"""The ``cryptorlpm`` command line."""
