"""MARS-style risk-profiled ensembles (Chen, Li, Wang 2025) for the Crypto Modules.

Per coin, an ensemble of agent variants from capital-preserving to aggressive, each a SAM-like
DQN agent held to its own risk threshold by a safety critic, plus rule variants (cash, hold,
trend filter); a meta-adaptive controller that weights the variants from the market regime,
fitted on realised returns net of fees; and, for ``mars+manager``, a manager that sets the
portfolio's gross exposure. The risk gate stays outside every network.

* :mod:`~strategies.mars.network` - the variants of a coin (and seeds) as one batched network;
* :mod:`~strategies.mars.labels` - the safety critics' causal cost (forward drawdown);
* :mod:`~strategies.mars.training` - training them (DQN + safety critic, batched);
* :mod:`~strategies.mars.artifact` - the artifact folder (``mars.json``, weights);
* :mod:`~strategies.mars.regime` - regime features (causal, batch = bar by bar);
* :mod:`~strategies.mars.controller` / :mod:`~strategies.mars.manager` - the meta-controller
  and the manager, fitted on realised net returns;
* :mod:`~strategies.mars.module` - one coin's ensemble as a bar-by-bar handler;
* :mod:`~strategies.mars.policy` - the ``mars`` / ``mars+manager`` engine policies.
"""
