"""Hyperparameter optimisation: the Optuna sweeper's machinery, pruning, Katib manifests.

``saltx.hpo.pruning`` is what training code calls; the rest is used by the Hydra plugin
``hydra_plugins.saltx_optuna_sweeper`` and by ``python -m saltx.hpo.katib``. Nothing is
imported here, so that ``from saltx.hpo import pruning`` stays cheap. See docs/hpo.md.
"""
