"""The Optuna sweep loop, in-process: a fake Hydra launcher runs a known objective.

The launcher stands in for Hydra's BasicLauncher: it calls the sweeper's TrialRunner with
the job number and a config made from the job's overrides, and wraps exceptions in
JobReturn exactly as ``hydra.core.utils.run_job`` does (status FAILED, the exception as
``_return_value``). The subprocess tests in tests/pipeline/test_sweep.py run real Hydra.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from saltx.hpo import pruning
from saltx.hpo.results import RESULTS_FILE, redact_url
from saltx.hpo.sweeper import OptunaSweeperImpl, TrialRunner, objective_values, sweeper_settings

PARAMS = {"x": "interval(-2, 2)", "y": "range(0, 4)", "c": "choice(a, b)"}


def objective(cfg: Any) -> float:
    return (cfg.x - 1.0) ** 2 + (cfg.y - 2.0) ** 2 + (0.5 if cfg.c == "b" else 0.0)


class FakeLauncher:
    def __init__(self, runner: TrialRunner) -> None:
        self.runner = runner
        self.launched: list[tuple[int, list[str]]] = []

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        out = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            self.launched.append((num, list(overrides)))
            cfg = OmegaConf.create(
                {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in overrides}
            )
            ret = JobReturn(overrides=list(overrides))
            try:
                ret.return_value = self.runner.run(num, cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED
            out.append(ret)
        return out


def make_sweeper(tmp_path: Path, task: Callable[[Any], Any], **kwargs: Any) -> OptunaSweeperImpl:
    settings = {
        "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
        "params": PARAMS,
        "n_trials": 4,
        "plots": False,
    }
    settings.update(kwargs)
    sweeper = OptunaSweeperImpl(**sweeper_settings(settings))
    sweeper.config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path)}, "job": {"name": "unit"}}}
    )
    sweeper.runner = TrialRunner(task)
    sweeper.launcher = FakeLauncher(sweeper.runner)
    return sweeper


def load(tmp_path: Path, name: str = "unit") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def test_four_complete_trials_and_results_match_the_study(tmp_path):
    sweeper = make_sweeper(tmp_path, objective)
    sweeper.sweep([])
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    for t in study.trials:  # the job saw the sampled parameters
        assert t.value == pytest.approx(objective(OmegaConf.create(t.params)))
    results = yaml.safe_load((tmp_path / RESULTS_FILE).read_text())
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["best_params"] == study.best_params
    assert results["best_trial"] == study.best_trial.number
    assert results["worker"]["trials"] == [0, 1, 2, 3]
    # job number = trial number, so sweep sub-directories never collide between workers
    assert [num for num, _ in sweeper.launcher.launched] == [0, 1, 2, 3]


def test_resume_fills_the_study_up_to_n_trials(tmp_path):
    make_sweeper(tmp_path, objective, n_trials=2).sweep([])
    make_sweeper(tmp_path, objective, n_trials=2).sweep([])  # already full: nothing to do
    assert len(load(tmp_path).trials) == 2
    second = make_sweeper(tmp_path, objective, n_trials=4)
    second.sweep([])
    assert len(load(tmp_path).trials) == 4
    assert [num for num, _ in second.launcher.launched] == [2, 3]


def test_failures_and_non_finite_values_are_fail_and_the_sweep_continues(tmp_path):
    calls = itertools.count()  # the fake launcher runs the trials in order

    def task(cfg):
        n = next(calls)
        if n == 1:
            raise RuntimeError("boom")
        return math.nan if n == 2 else objective(cfg)

    make_sweeper(tmp_path, task, max_failure_rate=0.5).sweep([])
    study = load(tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "boom" in study.trials[1].user_attrs["fail_reason"]
    assert "non-finite" in study.trials[2].user_attrs["fail_reason"]


def test_too_many_failures_stop_the_sweep(tmp_path):
    def task(cfg):
        raise ValueError("always")

    with pytest.raises(RuntimeError, match="max_failure_rate"):
        make_sweeper(tmp_path, task, max_failure_rate=0.25, n_trials=8).sweep([])
    study = load(tmp_path)
    assert len(study.trials) == 3  # floor(0.25 * 8) = 2 failures allowed, the third stops
    assert (tmp_path / RESULTS_FILE).exists()


def test_pruned_trials_are_recorded_as_pruned(tmp_path):
    def task(cfg):
        for step in range(3):
            pruning.report(objective(cfg) + 10.0, step)
        return objective(cfg)

    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}
    make_sweeper(tmp_path, task, pruner=pruner).sweep([])
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 4
    assert all(t.intermediate_values == {0: t.intermediate_values[0]} for t in study.trials)


def test_keyboard_interrupt_leaves_no_trial_running(tmp_path):
    calls = itertools.count()  # the fake launcher runs the trials in order

    def task(cfg):
        if next(calls) == 3:
            raise KeyboardInterrupt
        return objective(cfg)

    with pytest.raises(KeyboardInterrupt):
        make_sweeper(tmp_path, task, n_jobs=2).sweep([])
    states = [t.state for t in load(tmp_path).trials]
    # trial 2 finished before the interrupt in the same batch: its value is kept
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]


def test_grid_sampler_stops_when_the_grid_is_exhausted(tmp_path):
    sweeper = make_sweeper(
        tmp_path,
        objective,
        sampler={"_target_": "optuna.samplers.GridSampler", "seed": 0},
        params={"x": "choice(0.0, 1.0)", "y": "range(1, 3)", "c": "a"},
        n_trials=100,
        n_jobs=3,
    )
    sweeper.sweep([])
    study = load(tmp_path)
    assert len(study.trials) == 4
    assert sorted((t.params["x"], t.params["y"]) for t in study.trials) == [
        (0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)
    ]  # fmt: skip
    assert all(ovs[0] == "c=a" for _, ovs in sweeper.launcher.launched)


@pytest.mark.parametrize("sampler", ["optuna.samplers.TPESampler", "optuna.samplers.CmaEsSampler"])
def test_seeded_samplers_repeat_their_proposals(tmp_path, sampler):
    runs = []
    for i in range(2):
        make_sweeper(
            tmp_path / str(i), objective, sampler={"_target_": sampler, "seed": 7}, n_trials=3,
            params={"x": "interval(-2, 2)", "y": "tag(int, interval(0, 4))", "c": "b"},
        ).sweep([])  # fmt: skip
        runs.append([t.params for t in load(tmp_path / str(i)).trials])
    assert runs[0] == runs[1]


def test_multi_objective_writes_the_pareto_front_and_plots(tmp_path):
    sweeper = make_sweeper(
        tmp_path,
        lambda cfg: [objective(cfg), abs(cfg.x)],
        direction=["minimize", "minimize"],
        sampler={"_target_": "optuna.samplers.NSGAIISampler", "seed": 1},
        plots=True,
    )
    sweeper.sweep([])
    study = load(tmp_path)
    results = yaml.safe_load((tmp_path / RESULTS_FILE).read_text())
    assert results["directions"] == ["minimize", "minimize"]
    front = {e["number"]: e["values"] for e in results["pareto_front"]}
    assert front == {t.number: t.values for t in study.best_trials}
    assert (tmp_path / "optimization_history.png").exists()
    assert (tmp_path / "pareto_front.png").exists()


def test_directions_must_match_an_existing_study(tmp_path):
    make_sweeper(tmp_path, objective, n_trials=1).sweep([])
    with pytest.raises(ValueError, match="has directions"):
        make_sweeper(tmp_path, objective, direction="maximize").sweep([])


def test_custom_search_space_adds_conditional_parameters(tmp_path):
    import sys
    import types

    module = types.ModuleType("saltx_test_custom_space")

    def space(cfg, trial):
        if trial.params["c"] == "a":
            trial.suggest_int("depth", 1, 3)
        return {"fixed.extra": 5}

    module.space = space
    sys.modules[module.__name__] = module
    seen = []

    def task(cfg):
        seen.append(dict(cfg))
        return objective(cfg)

    make_sweeper(tmp_path, task, custom_search_space=f"{module.__name__}.space").sweep([])
    for job in seen:
        assert job["fixed.extra"] == 5
        assert ("depth" in job) == (job["c"] == "a")


def test_objective_values_and_redaction():
    assert objective_values(1, 1) == [1.0]
    assert objective_values((1, 2.5), 2) == [1.0, 2.5]
    with pytest.raises(ValueError, match="2 value"):
        objective_values([1, 2], 1)
    with pytest.raises(ValueError, match="non-finite"):
        objective_values(float("inf"), 1)
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_plugin_is_discovered_from_the_namespace_package():
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    import hydra_plugins

    # a namespace package: no __init__.py, so other plugins can share `hydra_plugins`
    assert getattr(hydra_plugins, "__file__", None) is None
    names = [c.__name__ for c in Plugins.instance().discover(Sweeper)]
    assert "SaltxOptunaSweeper" in names
    node = ConfigStore.instance().load("hydra/sweeper/saltx_optuna.yaml").node
    assert node._target_.endswith("saltx_optuna_sweeper.SaltxOptunaSweeper")
    assert node._recursive_ is False  # sampler/pruner nodes reach the sweeper as configs


@pytest.mark.parametrize("preset", ["gn2_optuna", "demo_optuna"])
def test_preset_parameters_are_keys_of_the_training_config(preset):
    from saltx.hpo.katib import compose_train_config

    cfg = compose_train_config([f"hparams_search={preset}", "+experiment=demo"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("SaltxOptunaSweeper")
    assert cfg.optimized_metric == "val/loss"
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key
    if preset == "gn2_optuna":
        assert set(sweeper.params) >= {
            "lrs.max", "data.batch_size", "model.encoder.num_layers", "model.embed_dim",
            "model.dropout",
        }  # fmt: skip
        from saltx.hpo.space import parse_search_space

        widths = parse_search_space(sweeper.params).distributions["model.embed_dim"].choices
        assert all(w % cfg.model.num_heads == 0 for w in widths)  # heads split the width
