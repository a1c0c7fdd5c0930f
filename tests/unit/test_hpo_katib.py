"""Katib Experiment manifests from the Optuna presets, and Katib's StdOut metric regex."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import jsonschema
import pytest
import yaml

from saltx.hpo import katib

# Katib StdOut collector's default metric regex (name=value), from Katib's source
KATIB_DEFAULT_REGEX = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
_STR = {"type": "string"}
_NAME = {"type": "string", "pattern": r"^[\w|-]+$"}  # what Katib's default regex captures
_SETTINGS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "value"],
        "properties": {"name": _STR, "value": _STR},
        "additionalProperties": False,
    },
}
# The part of Katib's Experiment CRD (kubeflow.org/v1beta1) that saltx writes; enums and
# field names follow pkg/apis/controller/experiments/v1beta1 and common/v1beta1.
EXPERIMENT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1beta1"},
        "kind": {"const": "Experiment"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 63,
                         "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": _STR,
            },
        },
        "spec": {
            "type": "object",
            "required": ["objective", "algorithm", "parameters", "trialTemplate"],
            "additionalProperties": False,
            "properties": {
                "objective": {
                    "type": "object",
                    "required": ["type", "objectiveMetricName"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["minimize", "maximize"]},
                        "goal": {"type": "number"},
                        "objectiveMetricName": _NAME,
                        "additionalMetricNames": {"type": "array", "items": _NAME},
                    },
                },
                "algorithm": {
                    "type": "object",
                    "required": ["algorithmName"],
                    "additionalProperties": False,
                    "properties": {
                        "algorithmName": {"enum": ["tpe", "multivariate-tpe", "random", "cmaes",
                                                   "grid", "hyperband", "bayesianoptimization",
                                                   "sobol"]},
                        "algorithmSettings": _SETTINGS,
                    },
                },
                "earlyStopping": {
                    "type": "object",
                    "required": ["algorithmName"],
                    "properties": {"algorithmName": {"enum": ["medianstop"]},
                                   "algorithmSettings": _SETTINGS},
                },
                "parallelTrialCount": {"type": "integer", "minimum": 1},
                "maxTrialCount": {"type": "integer", "minimum": 1},
                "maxFailedTrialCount": {"type": "integer", "minimum": 0},
                "parameters": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "parameterType", "feasibleSpace"],
                        "additionalProperties": False,
                        "properties": {
                            "name": _STR,
                            "parameterType": {"enum": ["int", "double", "categorical",
                                                       "discrete"]},
                            "feasibleSpace": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "min": _STR, "max": _STR, "step": _STR,
                                    "list": {"type": "array", "items": _STR, "minItems": 1},
                                    "distribution": {"enum": ["uniform", "logUniform", "normal",
                                                              "logNormal"]},
                                },
                            },
                        },
                    },
                },
                "metricsCollectorSpec": {
                    "type": "object",
                    "required": ["collector"],
                    "properties": {"collector": {
                        "type": "object", "required": ["kind"],
                        "properties": {"kind": {"enum": ["StdOut", "File", "TensorFlowEvent",
                                                         "PrometheusMetric", "Custom", "None"]}},
                    }},
                },
                "trialTemplate": {
                    "type": "object",
                    "required": ["primaryContainerName", "trialParameters", "trialSpec"],
                    "properties": {
                        "primaryContainerName": _STR,
                        "trialParameters": {"type": "array", "items": {
                            "type": "object", "required": ["name", "reference"],
                            "additionalProperties": False,
                            "properties": {"name": _STR, "description": _STR, "reference": _STR},
                        }},
                        "trialSpec": {
                            "type": "object",
                            "required": ["apiVersion", "kind", "spec"],
                            "properties": {"apiVersion": {"const": "batch/v1"},
                                           "kind": {"const": "Job"}},
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip


def check_manifest(manifest: dict) -> list[str]:
    """Schema plus Katib's cross-field rules; returns the trial's argv (the words of the
    container's ``sh -c`` command)."""
    jsonschema.validate(manifest, EXPERIMENT_SCHEMA)
    spec = manifest["spec"]
    template = spec["trialTemplate"]
    pod = template["trialSpec"]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == template["primaryContainerName"]]
    command = container["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3, command
    text = command[2]
    names = {p["name"] for p in spec["parameters"]}
    for tp in template["trialParameters"]:
        # every trial parameter is used in the template and refers to a parameter or metadata
        assert f"${{trialParameters.{tp['name']}}}" in text
        assert tp["reference"] in names or tp["reference"].startswith("${trialSpec.")
    for p in spec["parameters"]:
        fs = p["feasibleSpace"]
        if p["parameterType"] in ("int", "double"):
            assert float(fs["min"]) <= float(fs["max"])
        else:
            assert fs["list"]
    return shlex.split(text)


def test_gn2_preset_translates_to_a_valid_experiment(tmp_path):
    out = tmp_path / "katib.yaml"
    katib.main(["hparams_search=gn2_optuna", "image=reg/saltx:1", "namespace=ml", f"out={out}"])
    manifest = yaml.safe_load(out.read_text())
    command = check_manifest(manifest)
    spec = manifest["spec"]
    assert manifest["metadata"] == {"name": "gn2-optuna", "namespace": "ml"}
    assert spec["objective"]["type"] == "minimize"
    assert spec["objective"]["objectiveMetricName"] == "val_loss"
    assert "train_loss" in spec["objective"]["additionalMetricNames"]
    assert spec["algorithm"]["algorithmName"] == "tpe"
    assert {"name": "random_state", "value": "123"} in spec["algorithm"]["algorithmSettings"]
    assert spec["maxTrialCount"] == 40
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["lrs_max"]["parameterType"] == "double"
    assert params["lrs_max"]["feasibleSpace"]["distribution"] == "logUniform"
    assert params["model_encoder_num_layers"] == {
        "name": "model_encoder_num_layers",
        "parameterType": "int",
        "feasibleSpace": {"min": "2", "max": "8", "step": "2"},
    }
    assert params["data_batch_size"]["feasibleSpace"]["list"] == ["500", "1000", "2000"]
    assert command[:3] == ["python", "-m", "saltx.train"]
    assert "hparams_search=gn2_optuna" in command and "hydra.mode=RUN" in command
    assert "model.encoder.num_layers=${trialParameters.model_encoder_num_layers}" in command
    assert "model.dropout=${trialParameters.model_dropout}" in command
    assert (
        manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == "reg/saltx:1"
    )


def test_demo_preset_with_a_median_pruner_gets_medianstop():
    manifest = katib.main(["hparams_search=demo_optuna", "+experiment=demo", "out=/dev/null"])
    check_manifest(manifest)
    assert manifest["spec"]["algorithm"] == {
        "algorithmName": "random",
        "algorithmSettings": [{"name": "random_state", "value": "1"}],
    }
    assert manifest["spec"]["earlyStopping"]["algorithmName"] == "medianstop"
    assert manifest["spec"]["maxFailedTrialCount"] == 1


@pytest.mark.parametrize(
    ("target", "algorithm"),
    [("optuna.samplers.CmaEsSampler", "cmaes"), ("optuna.samplers.GridSampler", "grid")],
)
def test_sampler_to_algorithm(target, algorithm):
    sweeper = {
        "sampler": {"_target_": target, "seed": 3},
        "params": {"a": "choice(x, y)", "b": "range(1, 4)"},
        "direction": "maximize",
    }
    manifest = katib.build_experiment(sweeper, optimized_metric="val/auc", name="T_1")
    check_manifest(manifest)
    assert manifest["spec"]["algorithm"]["algorithmName"] == algorithm
    assert manifest["spec"]["objective"]["type"] == "maximize"
    assert manifest["metadata"]["name"] == "t-1"


@pytest.mark.parametrize(
    ("sweeper", "message"),
    [
        ({"sampler": {"_target_": "optuna.samplers.NSGAIISampler"},
          "params": {"a": "choice(1, 2)"}}, "no Katib counterpart"),
        ({"direction": ["minimize", "maximize"], "params": {"a": "choice(1, 2)"}}, "one objective"),
        ({"custom_search_space": "m.f", "params": {"a": "choice(1, 2)"}}, "custom_search_space"),
        ({"params": {}}, "search space is empty"),
    ],
)  # fmt: skip
def test_untranslatable_sweeps_fail_clearly(sweeper, message):
    with pytest.raises(ValueError, match=message):
        katib.build_experiment(sweeper, optimized_metric="val/loss", name="x")


def test_katibs_default_regex_reads_the_performance_writer(tmp_path, capsys):
    from saltx.engine.callbacks import FitStart
    from saltx.engine.distributed import DistInfo
    from saltx.hpo.katib_writer import PerformanceWriter
    from saltx.io.rundir import RunDir

    writer = PerformanceWriter(std_out=True)
    writer.on_fit_start(FitStart(RunDir(tmp_path), DistInfo(), None))
    metrics = {"val/loss": 0.1234, "train/loss": 2.5e-3, "val/jet_classification_loss": 0.5}
    writer.on_validation_end(30, 3, metrics)
    found = {m.group(1): float(m.group(2))
             for m in re.finditer(KATIB_DEFAULT_REGEX, capsys.readouterr().out)}  # fmt: skip
    manifest = katib.build_experiment(
        {"params": {"a": "choice(1, 2)"}},
        optimized_metric="val/loss",
        name="x",
        additional_metrics=["train/loss", "val/jet_classification_loss"],
    )
    objective = manifest["spec"]["objective"]
    for name in [objective["objectiveMetricName"], *objective["additionalMetricNames"]]:
        assert name in found
    assert found["val_loss"] == pytest.approx(0.1234, abs=1e-5)
    assert found["train_loss"] == pytest.approx(2.5e-3, abs=1e-5)
    assert katib.katib_name("val/loss") == "val_loss"


def _katib_wrap(command: list[str], metrics_file: str, mark_cmd: str) -> list[str]:
    """The container command after Katib's StdOut collector rewrote it (Katib's pod webhook,
    ``wrapWorkerContainer``): ``sh -c "<args joined by spaces> 1>FILE 2>&1 && <mark>"``; a
    command that already is ``sh -c STRING`` keeps its ``sh -c``."""
    shell, args = ["sh", "-c"], list(command)
    if len(args) > 2 and args[0] in ("sh", "bash") and args[1][1:2] == "c":
        shell, args = args[:2], args[2:]
    args += [f"1>{metrics_file} 2>&1", "&&", mark_cmd]
    return [*shell, " ".join(args)]


def test_the_trial_command_survives_katibs_sh_c(tmp_path):
    """Run the trial command as Katib's collector does, under ``sh -c`` (dash on Debian):
    Hydra must receive every override intact (``${paths.log_dir}`` included) and compose
    the trial's config. (Unquoted, sh stops with "Bad substitution" before Python starts.)"""
    spaced = "data.train_file='/data/my files/train.h5'"  # a path with a space, Hydra-quoted
    manifest = katib.main(["hparams_search=gn2_optuna", spaced, "out=/dev/null"])
    template = manifest["spec"]["trialTemplate"]
    (container,) = template["trialSpec"]["spec"]["template"]["spec"]["containers"]
    values = {"lrs_max": "0.00123", "model_encoder_num_layers": "4", "model_dropout": "0.1",
              "data_batch_size": "500", "model_embed_dim": "192",
              "trialName": "gn2-optuna-x7k2p"}  # fmt: skip
    command = []
    for word in container["command"]:  # Katib substitutes the trial parameters first
        for tp in template["trialParameters"]:
            word = word.replace(f"${{trialParameters.{tp['name']}}}", values[tp["name"]])
        command.append(word)
    command[-1] += " --cfg job --resolve"  # Hydra prints the composed config, trains nothing
    bindir = tmp_path / "bin"  # `python` on PATH is this venv's interpreter
    bindir.mkdir()
    (bindir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bindir / "python").chmod(0o755)
    log, mark = tmp_path / "metrics.log", tmp_path / "completed"
    wrapped = _katib_wrap(command, str(log), f"echo completed > {mark}")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        ["/bin/sh", *wrapped[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    output = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, proc.stderr + output
    assert mark.read_text().strip() == "completed"
    cfg = yaml.safe_load(output[output.index("name:") :] if "name:" in output else output)
    assert cfg["paths"]["output_dir"] == "logs/katib/gn2-optuna-x7k2p"
    assert cfg["lrs"]["max"] == pytest.approx(0.00123)
    assert cfg["model"]["encoder"]["num_layers"] == 4
    assert cfg["model"]["dropout"] == pytest.approx(0.1)
    assert cfg["data"]["batch_size"] == 500
    assert cfg["model"]["embed_dim"] == 192
    assert cfg["data"]["train_file"] == "/data/my files/train.h5"
