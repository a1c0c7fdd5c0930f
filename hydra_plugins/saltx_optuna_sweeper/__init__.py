"""saltx's Optuna sweeper for Hydra (``hydra/sweeper=saltx_optuna``); see ``docs/hpo.md``."""
