"""The Live Trading Unit: the daemon that runs the engine against an exchange (or on paper).

``journal`` (state.db), ``executor`` (ccxt and paper), ``reconcile``, ``clock`` (the exchange's
time), ``driver`` (one cycle per bar close), ``control`` (operator commands and their socket),
``daemon`` (assembly and main loop), ``status`` (``cryptorlpm live status``).
"""
