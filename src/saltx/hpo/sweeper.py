"""The Optuna sweep behind ``hydra/sweeper=saltx_optuna`` (see ``docs/hpo.md``).

The Hydra plugin class (``hydra_plugins.saltx_optuna_sweeper``) only forwards to
:class:`OptunaSweeperImpl`, so that importing Hydra plugins stays cheap for runs that do
not sweep.

One sweep, as run by every worker that shares a study:

1. parse the search space (``hydra.sweeper.params`` plus sweep overrides on the command
   line), open or create the study in the storage;
2. while the study holds fewer than ``n_trials`` trials (any state but WAITING), ask for up
   to ``n_jobs`` trials, launch them through Hydra's launcher (one job per trial, job number
   = trial number), and tell the study each outcome: COMPLETE with the returned value(s);
   PRUNED when the job raised :class:`optuna.TrialPruned`; FAIL when it raised anything
   else or returned a non-finite value;
3. write ``optimization_results.yaml``, log a table and save plots in the sweep directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import Trial, TrialState

from saltx.hpo import results as results_mod
from saltx.hpo.pruning import active_trial
from saltx.hpo.space import SearchSpace, format_value, load_custom_search_space, parse_search_space

log = logging.getLogger(__name__)

# short names accepted for `sampler`/`pruner` instead of a {_target_: ...} node
SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "grid": "optuna.samplers.GridSampler",
    "nsga2": "optuna.samplers.NSGAIISampler",
}
PRUNERS = {
    "median": "optuna.pruners.MedianPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "nop": "optuna.pruners.NopPruner",
}
# trial states that count against `n_trials` (WAITING trials are enqueued, not yet run)
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


class TrialRunner:
    """The task function the launcher calls: runs one job with its trial made current.

    The sweeper fills :attr:`trials` (job number -> trial) before each launch. Outcomes are
    recorded as jobs finish so that an interrupted batch still tells the study what the
    finished jobs returned. Pickled (for launchers that run jobs elsewhere) it carries only
    the task function: remote jobs run without a current trial, so they cannot be pruned.
    """

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function
        self.trials: dict[int, Trial] = {}
        self.outcomes: dict[int, tuple[bool, Any]] = {}

    def __call__(self, cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        return self.run(int(HydraConfig.get().job.num), cfg)

    def run(self, job_num: int, cfg: DictConfig) -> Any:
        """Run the task for job ``job_num`` with its trial current; record the outcome."""
        with active_trial(self.trials.get(job_num)):
            try:
                value = self.task_function(cfg)
            except Exception as e:
                self.outcomes[job_num] = (False, e)
                raise
        self.outcomes[job_num] = (True, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {"task_function": self.task_function, "trials": {}, "outcomes": {}}


def sweeper_settings(node: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``hydra.sweeper`` settings: ``node`` on top of the defaults of the sweeper's schema
    (``SaltxOptunaSweeperConf``, the one place they live), without Hydra's ``_target_`` and
    ``_recursive_``; the keyword arguments of :class:`OptunaSweeperImpl`.

    Raises
    ------
    ValueError
        A key the schema does not declare.
    """
    from hydra_plugins.saltx_optuna_sweeper.saltx_optuna_sweeper import SaltxOptunaSweeperConf

    base = OmegaConf.structured(SaltxOptunaSweeperConf)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(dict(node or {})))
    except Exception as err:  # an unknown key (omegaconf's error names it)
        raise ValueError(f"hydra.sweeper: {err}") from None
    out = OmegaConf.to_container(merged)
    assert isinstance(out, dict)
    return {k: v for k, v in out.items() if k not in ("_target_", "_recursive_")}


class OptunaSweeperImpl:
    """Hydra sweeper that fills an Optuna study (arguments: see ``SaltxOptunaSweeperConf``)."""

    def __init__(
        self,
        *,
        sampler: Any,
        pruner: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        load_if_exists: bool,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Mapping[str, Any] | None,
        custom_search_space: str | None,
        plots: bool,
        heartbeat_interval: int | None,
        grace_period: int | None,
        failed_trial_callback: Any,
    ) -> None:
        if heartbeat_interval is not None and int(heartbeat_interval) < 1:
            raise ValueError(
                f"hydra.sweeper.heartbeat_interval must be >= 1 s or null, got {heartbeat_interval}"
            )
        if grace_period is not None and int(grace_period) < 1:
            raise ValueError(
                f"hydra.sweeper.grace_period must be >= 1 s or null, got {grace_period}"
            )
        if n_trials < 0:
            raise ValueError(f"hydra.sweeper.n_trials must be >= 0, got {n_trials}")
        if n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_jobs must be >= 1, got {n_jobs}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(
                f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}"
            )
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.load_if_exists = load_if_exists
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.custom_search_space = custom_search_space
        self.plots = plots
        self.heartbeat_interval = None if heartbeat_interval is None else int(heartbeat_interval)
        self.grace_period = None if grace_period is None else int(grace_period)
        self.failed_trial_callback = failed_trial_callback
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.runner: TrialRunner | None = None
        self._storage: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the context and instantiate the configured launcher around a TrialRunner."""
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.runner = TrialRunner(task_function)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=self.runner, config=config
        )

    # ------------------------------------------------------------------ building blocks
    def directions(self) -> list[str]:
        """The study's directions, lower case (``direction`` may be a string or a list)."""
        d = self.direction
        items = list(d) if isinstance(d, list | tuple | ListConfig) else [d]
        out = []
        for item in items:
            name = str(item.name if hasattr(item, "name") else item).lower()
            if name not in ("minimize", "maximize"):
                raise ValueError(
                    f"hydra.sweeper.direction must be 'minimize', 'maximize' or a list of them, "
                    f"got {item!r}"
                )
            out.append(name)
        if not out:
            raise ValueError("hydra.sweeper.direction is an empty list")
        return out

    def storage_url(self, sweep_dir: Path) -> str | None:
        """The storage URL (None for a configured storage object without ``url``)."""
        if self.storage is None:
            return f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        if isinstance(self.storage, str):
            return self.storage
        url = self.storage.get("url") if isinstance(self.storage, Mapping | DictConfig) else None
        return None if url is None else str(url)

    def build_storage(self, sweep_dir: Path) -> Any:
        """An Optuna storage: URL string, ``{_target_: ...}`` node, or SQLite in the sweep dir.

        URL storages get Optuna's heartbeat (``heartbeat_interval``, ``grace_period``,
        ``failed_trial_callback``): a trial whose worker stopped beating (SIGKILL, a lost
        node) is failed by the next worker that opens the study. Several workers that open
        a fresh database at once may race to create its tables; that is retried a few times.
        """
        if isinstance(self.storage, Mapping | DictConfig):
            return _instantiate(self.storage, {}, "hydra.sweeper.storage")
        url = self.storage_url(sweep_dir)
        assert url is not None
        heartbeat: dict[str, Any] = {}
        if self.heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": self.heartbeat_interval,
                "grace_period": self.grace_period,
            }
            if self.failed_trial_callback is not None:
                heartbeat["heartbeat_stale_trial_callback"] = _instantiate(
                    _target_node(self.failed_trial_callback, {}, "a callable"),
                    {},
                    "hydra.sweeper.failed_trial_callback",
                )
        for attempt in range(5):
            try:
                with _quiet_heartbeat_warnings():
                    return optuna.storages.RDBStorage(url, **heartbeat)
            except Exception as e:
                if attempt == 4:
                    raise RuntimeError(
                        f"cannot open the Optuna storage {results_mod.redact_url(url)}: {e}"
                    ) from e
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def build_sampler(self, space: SearchSpace) -> optuna.samplers.BaseSampler:
        """Instantiate ``sampler``; a grid sampler gets the search space's discrete values."""
        node = _target_node(self.sampler, SAMPLERS, "optuna.samplers.TPESampler")
        extra: dict[str, Any] = {}
        if node["_target_"].rsplit(".", 1)[-1] == "GridSampler" and "search_space" not in node:
            if self.custom_search_space:
                raise ValueError(
                    "the grid sampler needs a static search space; it cannot be combined with "
                    f"custom_search_space={self.custom_search_space!r}"
                )
            extra["search_space"] = space.grid()
        return _instantiate(node, extra, "hydra.sweeper.sampler")

    def build_pruner(self) -> optuna.pruners.BasePruner:
        """Instantiate ``pruner`` (None: never prune)."""
        node = _target_node(self.pruner, PRUNERS, "optuna.pruners.NopPruner")
        return _instantiate(node, {}, "hydra.sweeper.pruner")

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Fill the study up to ``n_trials`` trials; return the launched jobs' results."""
        assert self.config is not None and self.launcher is not None and self.runner is not None
        space = parse_search_space(
            OmegaConf.to_container(self.params, resolve=False)
            if isinstance(self.params, DictConfig)
            else self.params,
            arguments,
        )
        custom = (
            load_custom_search_space(self.custom_search_space) if self.custom_search_space else None
        )
        directions = self.directions()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self._storage = self.build_storage(sweep_dir)
        url = self.storage_url(sweep_dir)
        sampler = self.build_sampler(space)
        study_name = self.study_name or str(self.config.hydra.job.name)
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=self.build_pruner(),
            study_name=study_name,
            directions=directions,
            load_if_exists=self.load_if_exists,
        )
        found = [d.name.lower() for d in study.directions]
        if found != directions:
            raise ValueError(
                f"study {study_name!r} in {results_mod.redact_url(url)} has directions {found}, "
                f"but hydra.sweeper.direction asks for {directions}"
            )
        log.info(
            "Optuna study %r in %s: %d trial(s) present, filling to n_trials=%d "
            "(sampler %s, pruner %s, %d job(s) per batch)",
            study_name,
            results_mod.redact_url(url),
            len(study.get_trials(deepcopy=False, states=COUNTED_STATES)),
            self.n_trials,
            type(study.sampler).__name__,
            type(study.pruner).__name__,
            self.n_jobs,
        )
        self._fail_stale_trials(study)
        log.info("search space: %s; fixed: %s", space.distributions, space.fixed)
        if not space.params and custom is None:
            log.warning(
                "the search space is empty (no hydra.sweeper.params, no sweep override on the "
                "command line): every trial runs the same configuration"
            )

        # a grid has a fixed number of points: never ask for more (Optuna would repeat them)
        n_trials = min(self.n_trials, _grid_size(self.sampler, space, sampler))
        allowed_failures = math.floor(self.max_failure_rate * self.n_trials)
        worker_trials: list[int] = []
        failures = 0
        all_returns: list[Sequence[JobReturn]] = []
        while True:
            self._fail_stale_trials(study)
            remaining = n_trials - len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
            exhausted = getattr(study.sampler, "is_exhausted", None)
            if remaining <= 0 or (exhausted is not None and exhausted(study)):
                break
            with _quiet_heartbeat_warnings():  # this sweeper beats itself (Heartbeat)
                batch = [study.ask(space.distributions) for _ in range(min(self.n_jobs, remaining))]
            worker_trials.extend(t.number for t in batch)
            try:
                job_overrides = [self._trial_overrides(t, space, custom) for t in batch]
            except BaseException:
                for t in batch:
                    t.set_user_attr("fail_reason", "custom_search_space raised")
                    _study_tell(study, t, state=TrialState.FAIL)
                raise
            returns = self._launch(study, batch, job_overrides)
            all_returns.append(returns)
            for trial, ret in zip(batch, returns):
                ok = ret.status == JobStatus.COMPLETED
                state = _tell(study, trial, ok, ret._return_value)
                if state == TrialState.FAIL:
                    failures += 1
            if failures > allowed_failures:
                self._finish(study, url, sweep_dir, worker_trials, failures)
                raise RuntimeError(
                    f"{failures} of this worker's {len(worker_trials)} trials failed, more than "
                    f"max_failure_rate={self.max_failure_rate} x n_trials={self.n_trials} allows "
                    f"({allowed_failures}); see the failed jobs' logs in {sweep_dir}"
                )
        self._finish(study, url, sweep_dir, worker_trials, failures)
        return all_returns

    def _trial_overrides(
        self,
        trial: Trial,
        space: SearchSpace,
        custom: Callable[..., Any] | None,
    ) -> list[str]:
        extra: list[str] = []
        if custom is not None:
            returned = custom(self.config, trial)
            for key, value in (returned or {}).items():
                extra.append(f"{key}={format_value(value)}")
        return space.overrides(trial.params) + extra

    def _launch(
        self, study: optuna.Study, batch: list[Trial], job_overrides: list[list[str]]
    ) -> list[JobReturn]:
        """Launch one job per trial; on any escape (Ctrl-C) leave no trial RUNNING."""
        assert self.runner is not None
        self.runner.trials = {t.number: t for t in batch}
        self.runner.outcomes = {}
        returns: list[JobReturn] = []
        heartbeat = Heartbeat(self._storage, batch)
        try:
            with heartbeat:
                for start, stop in _contiguous_runs([t.number for t in batch]):
                    group = job_overrides[len(returns) : len(returns) + stop - start]
                    returns.extend(self.launcher.launch(group, initial_job_idx=start))
        except BaseException:
            for i, trial in enumerate(batch):
                if i < len(returns):
                    ret = returns[i]
                    _tell(study, trial, ret.status == JobStatus.COMPLETED, ret._return_value)
                elif trial.number in self.runner.outcomes:
                    _tell(study, trial, *self.runner.outcomes[trial.number])
                else:
                    trial.set_user_attr("fail_reason", "interrupted before the job finished")
                    _study_tell(study, trial, state=TrialState.FAIL)
            log.error("sweep interrupted: unfinished trials of the batch were told FAIL")
            raise
        finally:
            self.runner.trials = {}
        return returns

    def _fail_stale_trials(self, study: optuna.Study) -> None:
        """Fail RUNNING trials whose worker stopped beating (no-op without a heartbeat)."""
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with _quiet_heartbeat_warnings():
            optuna.storages.fail_stale_trials(study)
        if not before:
            return
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for number in sorted(before - after):
            log.warning(
                "trial %d was RUNNING without a heartbeat for longer than the grace period "
                "(its worker died): marked FAIL",
                number,
            )

    def _finish(
        self,
        study: optuna.Study,
        url: str | None,
        sweep_dir: Path,
        worker_trials: list[int],
        failures: int,
    ) -> None:
        summary = results_mod.summarize(
            study, storage_url=url, worker_trials=worker_trials, worker_failures=failures
        )
        path = results_mod.write_results(summary, sweep_dir)
        log.info(
            "Optuna trials of study %r:\n%s", study.study_name, results_mod.format_table(study)
        )
        if "best_params" in summary:
            log.info("best value %s with %s", summary["best_value"], summary["best_params"])
        else:
            log.info("Pareto front: %d trial(s)", len(summary["pareto_front"]))
        log.info("results written to %s", path)
        if self.plots:
            for p in results_mod.save_plots(study, sweep_dir):
                log.info("plot written to %s", p)


class Heartbeat:
    """Records a heartbeat for the trials of a batch while their jobs run (a thread).

    Optuna records heartbeats only inside ``study.optimize``; this sweeper asks and tells
    itself, so it beats for its trials: once on entry, then every
    ``heartbeat_interval`` seconds of the study's storage, until the block ends. Without
    a heartbeat-enabled storage it does nothing.
    """

    def __init__(self, storage: Any, trials: Sequence[Trial]) -> None:
        get_interval = getattr(storage, "get_heartbeat_interval", None)
        self.storage = storage
        self.interval = get_interval() if get_interval is not None else None
        # Trial exposes no public id; the storage addresses trials by it
        self.trial_ids = [t._trial_id for t in trials]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Record one heartbeat for every trial (errors are logged, never raised)."""
        for trial_id in self.trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as e:  # a lost connection must not fail the running job
                log.warning("could not record the heartbeat of trial id %d: %s", trial_id, e)

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        if self.interval is not None and self.trial_ids:
            self.beat()
            self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@contextlib.contextmanager
def _quiet_heartbeat_warnings() -> Iterator[None]:
    """Silence Optuna's warnings about the heartbeat being experimental and meant for
    ``Study.optimize`` (the sweeper records it itself, see :class:`Heartbeat`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def _grid_size(node: Any, space: SearchSpace, sampler: optuna.samplers.BaseSampler) -> int:
    """Number of grid points for a grid sampler (a very large number for other samplers)."""
    if not isinstance(sampler, optuna.samplers.GridSampler):
        return sys.maxsize
    grid = node.get("search_space") if isinstance(node, Mapping | DictConfig) else None
    grid = grid if grid is not None else space.grid()
    return math.prod(len(values) for values in grid.values())


def _contiguous_runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Split trial numbers into runs of consecutive numbers: ``[(start, stop), ...]``."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n:
            runs[-1] = (runs[-1][0], n + 1)
        else:
            runs.append((n, n + 1))
    return runs


def _target_node(node: Any, short: Mapping[str, str], default: str) -> dict[str, Any]:
    if node is None:
        return {"_target_": default}
    if isinstance(node, str):
        if node.lower() not in short:
            raise ValueError(
                f"unknown short name {node!r}; use one of {sorted(short)} or a _target_"
            )
        return {"_target_": short[node.lower()]}
    out = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    if "_target_" not in out:
        raise ValueError(f"expected a node with _target_ (e.g. {default}), got {out}")
    return out


def _instantiate(node: Any, extra: dict[str, Any], where: str) -> Any:
    from saltx import targets

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    try:
        return targets.instantiate(
            node, where, targets.sweeper_kind(where), _convert_="all", **extra
        )
    except Exception as e:
        raise ValueError(f"cannot instantiate {where} ({node.get('_target_')}): {e}") from e


def _pruned(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, optuna.TrialPruned):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def objective_values(value: Any, n_objectives: int) -> list[float]:
    """Turn a job's return value into ``n_objectives`` finite floats.

    Raises
    ------
    ValueError
        If the value has the wrong length, is not a number, or is not finite.
    """
    if isinstance(value, Sequence | ListConfig) and not isinstance(value, str):
        items = list(value)
    elif hasattr(value, "tolist") and not isinstance(value, float | int):
        items = value.tolist()
        items = items if isinstance(items, list) else [items]
    else:
        items = [value]
    if len(items) != n_objectives:
        raise ValueError(
            f"the task returned {len(items)} value(s), the study has {n_objectives} objective(s)"
        )
    try:
        floats = [float(v) for v in items]
    except (TypeError, ValueError) as e:
        raise ValueError(f"the task returned {value!r}, expected a number per objective") from e
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"the task returned a non-finite value {floats}")
    return floats


def _study_tell(
    study: optuna.Study, trial: Trial, values: list[float] | None = None, state: Any = None
) -> None:
    """``study.tell`` outside ``study.optimize``.

    Optuna's grid sampler calls ``study.stop()`` from ``after_trial`` once the grid is
    used up, which raises outside ``optimize``; the trial is stored before that, and the
    sweep loop stops by itself on an exhausted grid, so that error is ignored.
    """
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _tell(study: optuna.Study, trial: Trial, ok: bool, value: Any) -> TrialState:
    """Tell the study one job's outcome; return the state recorded."""
    if ok:
        try:
            values = objective_values(value, len(study.directions))
        except ValueError as e:
            log.warning("trial %d failed: %s", trial.number, e)
            trial.set_user_attr("fail_reason", str(e))
            _study_tell(study, trial, state=TrialState.FAIL)
            return TrialState.FAIL
        _study_tell(study, trial, values)
        return TrialState.COMPLETE
    if _pruned(value):
        log.info("trial %d pruned: %s", trial.number, value)
        _study_tell(study, trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    log.warning(
        "trial %d failed: %s: %s",
        trial.number,
        type(value).__name__,
        value,
        exc_info=(type(value), value, value.__traceback__)
        if isinstance(value, BaseException)
        else None,
    )
    trial.set_user_attr("fail_reason", f"{type(value).__name__}: {value}"[:1000])
    _study_tell(study, trial, state=TrialState.FAIL)
    return TrialState.FAIL
