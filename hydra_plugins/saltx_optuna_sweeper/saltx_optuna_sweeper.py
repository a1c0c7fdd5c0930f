"""Hydra plugin entry: the ``saltx_optuna`` sweeper config and a thin Sweeper class.

Hydra imports every module under the ``hydra_plugins`` namespace package at start-up, so
this module stays light: the Optuna machinery (``saltx.hpo.sweeper``) is imported only when
a sweep is instantiated. It must not use ``from __future__ import annotations``: Hydra
executes plugin modules without registering them in ``sys.modules``, where dataclasses
cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SaltxOptunaSweeperConf:
    """``hydra.sweeper`` options (documented in ``docs/hpo.md``)."""

    _target_: str = "hydra_plugins.saltx_optuna_sweeper.saltx_optuna_sweeper.SaltxOptunaSweeper"
    # sampler/pruner/storage stay config nodes: the sweeper instantiates them itself
    _recursive_: bool = False
    # {_target_: optuna.samplers.XSampler, seed: ...} or a short name (tpe random cmaes grid nsga2)
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # {_target_: optuna.pruners.MedianPruner, ...}, a short name (median hyperband nop), or null
    pruner: Any = None
    # minimize | maximize, or a list of them for a multi-objective task
    direction: Any = "minimize"
    # null: sqlite:///<sweep dir>/optuna.db; a URL (postgresql://...) to share a study
    storage: Any = None
    # null: the Hydra job name (e.g. "train")
    study_name: str | None = None
    load_if_exists: bool = True
    # the study is filled up to this many trials (COMPLETE + PRUNED + FAIL + RUNNING)
    n_trials: int = 20
    # trials asked for and launched together (one launcher batch)
    n_jobs: int = 1
    # a worker stops once more than floor(max_failure_rate * n_trials) of its trials failed
    max_failure_rate: float = 0.2
    # key -> override expression: choice(...), range(...), interval(...), tag(log, ...), value
    params: dict[str, Any] | None = None
    # "module.function" called as fn(cfg, trial) for conditional parameters
    custom_search_space: str | None = None
    # save optimisation history / parameter importance plots in the sweep dir
    plots: bool = True
    # seconds between heartbeats of running trials (URL storages; null: no heartbeat). A
    # trial whose worker died is marked FAIL once its heartbeat is older than grace_period
    heartbeat_interval: int | None = 60
    # null: 2 x heartbeat_interval
    grace_period: int | None = None
    # {_target_: optuna.storages.RetryFailedTrialCallback, max_retry: 2}: called for each
    # trial failed that way (Optuna's heartbeat_stale_trial_callback); null: none
    failed_trial_callback: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="saltx_optuna", node=SaltxOptunaSweeperConf, provider="saltx"
)


class SaltxOptunaSweeper(Sweeper):
    """Hydra Sweeper that fills an Optuna study; the work is done by ``saltx.hpo.sweeper``."""

    def __init__(self, **kwargs: Any) -> None:
        from saltx.hpo.sweeper import OptunaSweeperImpl

        self._impl = OptunaSweeperImpl(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self._impl.launcher

    def sweep(self, arguments: list[str]) -> Any:
        return self._impl.sweep(arguments)
