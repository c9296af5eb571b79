"""PAU agents: the EAM and SAM of a Crypto Module, their environment, learner and training.

See ``README.md`` in this folder for the state, the rewards, the networks and the pipeline.
"""
