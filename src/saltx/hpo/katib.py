"""Translate an Optuna sweep preset into a Kubeflow Katib ``Experiment`` manifest.

``python -m saltx.hpo.katib hparams_search=gn2_optuna [image=IMG] [namespace=NS]
[name=NAME] [out=FILE] [train overrides ...]`` composes the training config with the
preset, reads ``hydra.sweeper`` (the same search space, direction, sampler, budget) and
writes a ``kubeflow.org/v1beta1`` Experiment (YAML, to ``out`` or stdout). Each Katib trial
is a ``batch/v1`` Job running ``python -m saltx.train`` with the preset in RUN mode and one
``key=${trialParameters.x}`` override per searched key, quoted for ``sh -c`` (how Katib's
StdOut collector runs it). Katib's StdOut collector reads the
``val_loss=0.12345`` lines of saltx's performance writer (``saltx.hpo.katib_writer``).
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from saltx.hpo.katib_writer import katib_name
from saltx.hpo.space import Param, format_value, parse_search_space

API_VERSION = "kubeflow.org/v1beta1"
CONTAINER = "training-container"
DEFAULT_IMAGE = "saltx:latest"
DEFAULT_NAMESPACE = "kubeflow"
# Optuna sampler class -> Katib algorithm name
ALGORITHMS = {
    "TPESampler": "tpe",
    "RandomSampler": "random",
    "CmaEsSampler": "cmaes",
    "GridSampler": "grid",
}
# Optuna sampler argument -> Katib algorithm setting (Katib's Optuna suggestion service)
ALGORITHM_SETTINGS = {
    "tpe": {"seed": "random_state", "n_startup_trials": "n_startup_trials",
            "n_ei_candidates": "n_ei_candidates"},
    "random": {"seed": "random_state"},
    "cmaes": {"seed": "random_state", "sigma0": "sigma"},
    "grid": {},
}  # fmt: skip
OPTIONS = ("image", "namespace", "name", "out")


def _dns_name(name: str) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return out[:63].rstrip("-") or "saltx"


def shell_command(argv: Sequence[str]) -> list[str]:
    """The container command ``["sh", "-c", <argv quoted for a shell>]``.

    Katib's StdOut metrics collector rewrites the trial container to run its command
    through ``sh -c`` (joined with spaces, with its output redirection appended; a
    command that already is ``sh -c STRING`` keeps its string). Hydra overrides such as
    ``paths.output_dir=${paths.log_dir}/...`` are not shell syntax (``sh`` stops with "Bad
    substitution"), so every word is quoted for the shell here; Katib still replaces
    ``${trialParameters.x}`` inside the quotes before the pod starts, and Kubernetes
    runs the same ``sh -c`` when no collector wraps it.
    """
    return ["sh", "-c", shlex.join(argv)]


def katib_parameter(param: Param) -> dict[str, Any]:
    """One ``spec.parameters`` entry for a searched parameter."""
    dist = param.distribution
    space: dict[str, Any]
    if isinstance(dist, FloatDistribution):
        kind = "double"
        space = {"min": format_value(float(dist.low)), "max": format_value(float(dist.high))}
        if dist.step is not None:
            space["step"] = format_value(float(dist.step))
    elif isinstance(dist, IntDistribution):
        kind = "int"
        space = {"min": str(dist.low), "max": str(dist.high)}
        if dist.step != 1:
            space["step"] = str(dist.step)
    elif isinstance(dist, CategoricalDistribution):
        numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in dist.choices)
        kind = "discrete" if numeric else "categorical"
        space = {"list": [param.raw_choices.get(c, format_value(c)) if isinstance(c, str)
                          else format_value(c) for c in dist.choices]}  # fmt: skip
    else:
        raise ValueError(f"parameter {param.name!r}: no Katib type for {dist!r}")
    if param.log:
        space["distribution"] = "logUniform"
    return {"name": katib_name(param.name), "parameterType": kind, "feasibleSpace": space}


def _sampler_target(sampler: Any) -> str:
    from saltx.hpo.sweeper import SAMPLERS

    if sampler is None:
        return "optuna.samplers.TPESampler"
    if isinstance(sampler, str):
        return SAMPLERS[sampler.lower()]
    return str(sampler["_target_"])


def katib_algorithm(sampler: Any) -> dict[str, Any]:
    """``spec.algorithm`` from the sweeper's sampler node (tpe, random, cmaes, grid)."""
    cls = _sampler_target(sampler).rsplit(".", 1)[-1]
    if cls not in ALGORITHMS:
        raise ValueError(
            f"sampler {cls} has no Katib counterpart; use one of {sorted(ALGORITHMS)} "
            f"(hydra.sweeper.sampler._target_)"
        )
    algo = ALGORITHMS[cls]
    settings = []
    if isinstance(sampler, Mapping):
        for key, setting in ALGORITHM_SETTINGS[algo].items():
            if sampler.get(key) is not None:
                settings.append({"name": setting, "value": str(sampler[key])})
    out: dict[str, Any] = {"algorithmName": algo}
    if settings:
        out["algorithmSettings"] = settings
    return out


def katib_early_stopping(pruner: Any) -> dict[str, Any] | None:
    """``spec.earlyStopping`` for a MedianPruner (Katib's ``medianstop``); None otherwise."""
    if not isinstance(pruner, Mapping) or not str(pruner.get("_target_", "")).endswith(
        "MedianPruner"
    ):
        return None
    settings = [
        {"name": "min_trials_required", "value": str(pruner.get("n_startup_trials", 5))},
        {"name": "start_step", "value": str(max(1, int(pruner.get("n_warmup_steps", 0))))},
    ]
    return {"algorithmName": "medianstop", "algorithmSettings": settings}


def build_experiment(
    sweeper: Mapping[str, Any],
    *,
    optimized_metric: str,
    name: str,
    namespace: str = DEFAULT_NAMESPACE,
    image: str = DEFAULT_IMAGE,
    train_overrides: Sequence[str] = (),
    additional_metrics: Sequence[str] = (),
) -> dict[str, Any]:
    """A Katib Experiment (as a dict) for the sweep that ``sweeper`` describes.

    Parameters
    ----------
    sweeper : Mapping
        The ``hydra.sweeper`` node (``params``, ``direction``, ``sampler``, ``pruner``,
        ``n_trials``, ``n_jobs``, ``max_failure_rate``).
    optimized_metric : str
        The objective (``val/loss``); Katib reads it as ``val_loss``.
    name, namespace, image : str
        Experiment name (made DNS-safe), Kubernetes namespace, training image.
    train_overrides : Sequence[str]
        Overrides for every trial (``hparams_search=...``, ``+experiment=...``); sweep
        expressions among them join the search space, as with the sweeper.
    additional_metrics : Sequence[str]
        More metrics for Katib to record (``train/loss``).

    Raises
    ------
    ValueError
        For several objectives, a custom search space, or a sampler Katib lacks.
    """
    from saltx.hpo.sweeper import sweeper_settings

    sweeper = sweeper_settings(sweeper)  # the schema's defaults for keys not given
    if sweeper["custom_search_space"]:
        raise ValueError(
            "custom_search_space (conditional parameters) cannot be written as a Katib "
            "search space; declare the parameters in hydra.sweeper.params"
        )
    direction = sweeper["direction"]
    if isinstance(direction, Sequence) and not isinstance(direction, str):
        if len(direction) != 1:
            raise ValueError(f"Katib optimises one objective; direction is {list(direction)}")
        direction = direction[0]
    space = parse_search_space(sweeper["params"], train_overrides)
    if not space.params:
        raise ValueError("the search space is empty: set hydra.sweeper.params")
    objective = katib_name(optimized_metric)
    extra = [katib_name(m) for m in additional_metrics if katib_name(m) != objective]

    trial_params = []
    argv = ["python", "-m", "saltx.train", *space.fixed, "hydra.mode=RUN"]
    for p in space.params.values():
        pname = katib_name(p.name)
        trial_params.append({"name": pname, "description": p.key, "reference": pname})
        argv.append(f"{p.key}=${{trialParameters.{pname}}}")
    if not any(o.lstrip("+").startswith("paths.output_dir=") for o in space.fixed):
        trial_params.append(
            {
                "name": "trialName",
                "description": "run directory name",
                "reference": "${trialSpec.Name}",
            }
        )
        argv.append("paths.output_dir=${paths.log_dir}/katib/${trialParameters.trialName}")
    command = shell_command(argv)

    n_trials = int(sweeper["n_trials"])
    rate = float(sweeper["max_failure_rate"])
    spec: dict[str, Any] = {
        "objective": {
            "type": str(direction).lower(),
            "objectiveMetricName": objective,
            "additionalMetricNames": extra,
        },
        "algorithm": katib_algorithm(sweeper["sampler"]),
        "parallelTrialCount": int(sweeper["n_jobs"]),
        "maxTrialCount": n_trials,
        "maxFailedTrialCount": math.floor(rate * n_trials) + 1,
        "parameters": [katib_parameter(p) for p in space.params.values()],
        "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
        "trialTemplate": {
            "primaryContainerName": CONTAINER,
            "trialParameters": trial_params,
            "trialSpec": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "spec": {
                    "template": {
                        "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                        "spec": {
                            "containers": [{"name": CONTAINER, "image": image, "command": command}],
                            "restartPolicy": "Never",
                        },
                    }
                },
            },
        },
    }
    early = katib_early_stopping(sweeper["pruner"])
    if early is not None:
        spec["earlyStopping"] = early
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": _dns_name(name), "namespace": namespace},
        "spec": spec,
    }


def compose_train_config(overrides: Sequence[str]) -> Any:
    """The composed ``train`` config (with its ``hydra`` node) for ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import saltx.config  # noqa: F401  (registers the schemas)

    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def split_arguments(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separate this tool's options (``image= namespace= name= out=``) from train overrides."""
    options: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OPTIONS:
            options[key] = value
        else:
            overrides.append(arg)
    return options, overrides


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI: write the manifest for ``hparams_search=...`` to ``out=FILE`` or stdout."""
    from omegaconf import OmegaConf

    options, overrides = split_arguments(sys.argv[1:] if argv is None else argv)
    if not any(o.split("=", 1)[0].lstrip("+") == "hparams_search" for o in overrides):
        raise SystemExit(
            "usage: python -m saltx.hpo.katib hparams_search=NAME [image=IMG] "
            "[namespace=NS] [name=NAME] [out=FILE] [train overrides ...]"
        )
    cfg = compose_train_config(overrides)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    assert isinstance(sweeper, dict)
    if "params" not in sweeper:
        raise SystemExit(
            f"hydra.sweeper is {sweeper.get('_target_')}, not the saltx Optuna sweeper; "
            f"is the hparams_search preset an Optuna one?"
        )
    preset = next(o.split("=", 1)[1] for o in overrides if "hparams_search=" in o)
    writer = cfg.trainer.get("performance_writer") or {}
    extra = ["train/loss", *[str(m) for m in (writer.get("add_metrics") or [])]]
    manifest = build_experiment(
        sweeper,
        optimized_metric=str(cfg.optimized_metric),
        name=options.get("name") or str(sweeper.get("study_name") or f"saltx-{preset}"),
        namespace=options.get("namespace", DEFAULT_NAMESPACE),
        image=options.get("image", DEFAULT_IMAGE),
        train_overrides=overrides,
        additional_metrics=extra,
    )
    text = yaml.safe_dump(manifest, sort_keys=False)
    if "out" in options:
        Path(options["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(options["out"]).write_text(text)
        print(f"wrote Katib Experiment {manifest['metadata']['name']} to {options['out']}")
    else:
        sys.stdout.write(text)
    return manifest


if __name__ == "__main__":
    main()
