"""Every hyperparameter of a Crypto Module, and how training runs, in typed frozen objects.

They live in :mod:`config.schema` (the ``[agents]`` and ``[training]`` config sections) so that a
config file validates them like every other section; this module re-exports them for the agents'
code. Each field is documented by the docstring under it (CleanRL's habit), which pydantic turns
into the field's description.
"""

from config.schema import CryptoModuleParams, DQNParams, TrainingConfig

__all__ = ["CryptoModuleParams", "DQNParams", "TrainingConfig"]
