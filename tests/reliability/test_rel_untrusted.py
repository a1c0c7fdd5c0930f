"""Configs and run directories are untrusted input (issue 14, part 2).

* ``_target_`` must be on the allow-list (``saltx.``, ``torch.nn.``, ``torch.optim.``,
  Optuna's samplers/pruners/storages, muP's optimizers, plus ``allowed_targets``), checked
  before anything is imported; the target must be a class of the expected kind before it is
  called, and the built object is checked again. A probe module that writes a marker file
  when imported shows that nothing outside the list is ever imported.
* A run directory's ``config.yaml`` is read without resolvers: an interpolation
  (``${oc.env:...}``) is refused, so no environment secret is copied anywhere; its own
  ``allowed_targets`` are not trusted.
* ``ckpt`` may not point outside the run directory unless it is an absolute path or URL,
  and then a note says so.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import Consumer, outcome
from relhelp import CONF_DIR, compose_train, write_tiny_data
from test_rel_hostile_h5 import _record

from saltx.config import validate

SHORT = ("trainer.max_epochs=1", "trainer.max_steps=3", "data.batch_size=16")
PROBE = "saltx_rel_probe"  # a module whose import writes a marker file
PLANTED = "PLANTED-env-secret-7f3e9a1c"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Tiny data, a finished tiny run, and the probe module on sys.path."""
    from saltx.train import train

    root = tmp_path_factory.mktemp("untrusted")
    data = write_tiny_data(root / "data", {"train": 64, "val": 32, "test": 32})
    run = root / "runs" / "A"
    train(compose_train(data, run, *SHORT))
    probe_dir = root / "probe"
    probe_dir.mkdir()
    marker = root / "probe_imported"
    (probe_dir / f"{PROBE}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "import torch\n"
        "class Module(torch.nn.Module):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__()\n"
        "class Opt(torch.optim.SGD):\n"
        "    pass\n"
    )
    sys.path.insert(0, str(probe_dir))
    yield SimpleNamespace(data=data, run=run, marker=marker, root=root)
    sys.path.remove(str(probe_dir))
    sys.modules.pop(PROBE, None)


def not_imported(env: SimpleNamespace) -> None:
    assert not env.marker.exists() and PROBE not in sys.modules, "the probe module was imported"


def check(case: str, result: tuple[str, str], pattern: str, kinds=("TargetError",)) -> None:
    group = (
        "ckpt" if case.startswith("ckpt=") else "run dir" if ": config.yaml" in case else "target"
    )
    _record(f"untrusted {group}: {case}", result)
    kind, message = result
    assert kind in kinds, f"{case}: {kind}: {message}"
    assert re.search(pattern, message, re.S), f"{case}: {pattern!r} not in: {message}"


# -- the allow-list, from the command line --------------------------------------------------
@pytest.mark.parametrize(
    ("override", "where"),
    [
        (f"model.encoder._target_={PROBE}.Module", r"model\.encoder"),
        (f"model.tasks.jet_classification._target_={PROBE}.Module", r"jet_classification"),
        (f"optimizer._target_={PROBE}.Opt", r"optimizer"),
        ("optimizer._target_=builtins.exec", r"optimizer"),
        ("model.attention._target_=sympy.sympify", r"model\.attention"),
        (f"+model.encoder.extra={{_target_: {PROBE}.Module}}", r"model\.encoder\.extra"),
        ("+model.pooling.helper={_target_: builtins.open, file: /tmp/x, mode: w}", r"pooling"),
    ],
)
def test_targets_off_the_list_are_refused_before_import(
    env: SimpleNamespace, override: str, where: str
) -> None:
    cfg = compose_train(env.data, env.root / "r", *SHORT, override)
    check(f"command line {override}", outcome(lambda: validate(cfg)), rf"{where}.*not allowed")
    # the builders refuse them on their own too (a config that skipped validate())
    if override.startswith("optimizer"):
        from saltx.engine.schedule import build_optimizer

        params = [torch.nn.Parameter(torch.zeros(2))]
        kwargs = {"lr": 0.1, "weight_decay": 0.0, "device": torch.device("cpu")}
        build = outcome(lambda: build_optimizer(cfg.optimizer, params, **kwargs))
    else:
        build = outcome(lambda: Consumer(cfg)(env.data / "train.h5"))
    check(f"build {override}", build, r"allowed")
    not_imported(env)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        # an allowed prefix, but a function that writes a file: refused before it is called
        ("model.pooling._target_=saltx.data.norm.write_yaml", r"write_yaml' is not a class"),
        ("model.encoder._target_=saltx.io.rundir.RunDir", r"is a RunDir, not a Module"),
        ("optimizer._target_=torch.nn.Linear", r"is a Linear, not a Optimizer"),
        ("model.encoder._target_=saltx.models.nothing.Here", r"cannot be imported"),
    ],
)
def test_targets_of_the_wrong_kind(env: SimpleNamespace, override: str, pattern: str) -> None:
    from saltx.train import train

    before = set(env.root.rglob("*"))
    cfg = compose_train(env.data, env.root / "kind", *SHORT, override)
    check(f"wrong kind {override}", outcome(lambda: train(cfg)), pattern)
    assert not {p for p in set(env.root.rglob("*")) - before if p.suffix == ".yaml"}


def test_allowed_targets_extends_the_list(env: SimpleNamespace) -> None:
    """``allowed_targets`` trusts more code, for the optimizer as for model parts."""
    from saltx.engine.schedule import build_optimizer

    cfg = OmegaConf.create({"optimizer": {"_target_": f"{PROBE}.Opt", "_partial_": True}})
    params = [torch.nn.Parameter(torch.zeros(2))]
    kwargs = {"lr": 0.1, "weight_decay": 0.0, "device": torch.device("cpu")}
    check(
        "optimizer off the list",
        outcome(lambda: build_optimizer(cfg.optimizer, params, **kwargs)),
        "not allowed",
    )
    not_imported(env)
    cfg.allowed_targets = [f"{PROBE}."]
    assert type(build_optimizer(cfg.optimizer, params, **kwargs)).__name__ == "Opt"
    result = outcome(
        lambda: validate(
            compose_train(
                env.data,
                env.root / "e",
                f"optimizer._target_={PROBE}.Opt",
                f"allowed_targets=[{PROBE}.]",
            )
        )
    )
    assert result == ("ok", ""), result
    env.marker.unlink()  # imported on purpose here: reset the probe for the other tests
    sys.modules.pop(PROBE, None)


def test_sweeper_nodes_must_be_samplers_and_pruners() -> None:
    from saltx.hpo.sweeper import _instantiate

    ok = _instantiate(
        {"_target_": "optuna.samplers.RandomSampler", "seed": 1}, {}, "hydra.sweeper.sampler"
    )
    assert type(ok).__name__ == "RandomSampler"
    for node, where, pattern in [
        (
            {"_target_": "optuna.pruners.MedianPruner"},
            "hydra.sweeper.sampler",
            r"not a BaseSampler",
        ),
        ({"_target_": "sympy.sympify", "a": "1"}, "hydra.sweeper.pruner", r"not allowed"),
        ({"_target_": "builtins.eval", "_args_": ["1"]}, "hydra.sweeper.storage", r"not allowed"),
    ]:
        result = outcome(lambda n=node, w=where: _instantiate(n, {}, w))
        check(f"sweeper {where} = {node['_target_']}", result, pattern, kinds=("ValueError",))


# -- tampered run directories ---------------------------------------------------------------
def victim(env: SimpleNamespace, name: str, edit) -> Path:
    """A copy of the finished run whose config.yaml is edited by ``edit(config_dict)``."""
    out = env.root / "victims" / name
    shutil.copytree(env.run, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    edit(config)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def entry(name: str, run_dir: Path, *overrides: str):
    """``saltx.evaluate.evaluate`` / ``saltx.export.export`` on ``run_dir``."""
    from saltx.evaluate import evaluate
    from saltx.export import export

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=[f"run_dir={run_dir}", *overrides])
    return lambda: (evaluate if name == "evaluate" else export)(cfg)


@pytest.mark.parametrize("name", ["evaluate", "export"])
def test_tampered_targets_in_a_run_dir(env: SimpleNamespace, name: str) -> None:
    def plant(config: dict) -> None:
        config["model"]["encoder"]["_target_"] = f"{PROBE}.Module"
        config["allowed_targets"] = [f"{PROBE}."]  # a run's own list is not trusted

    run = victim(env, f"targets-{name}", plant)
    check(
        f"{name}: config.yaml names {PROBE}.Module (and trusts it)",
        outcome(entry(name, run)),
        r"config\.yaml: model\.encoder\._target_=.*not allowed",
    )
    not_imported(env)


@pytest.mark.parametrize("name", ["evaluate", "export"])
def test_env_interpolation_in_a_run_dir(
    env: SimpleNamespace, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("SALTX_REL_PLANTED", PLANTED)

    def plant(config: dict) -> None:
        config["name"] = "${oc.env:SALTX_REL_PLANTED}"

    run = victim(env, f"env-{name}", plant)
    result = outcome(entry(name, run))
    check(
        f"{name}: config.yaml has name: ${{oc.env:...}}",
        result,
        r"interpolation at name.*edited",
        kinds=("RunDirError",),
    )
    out = capsys.readouterr()
    assert PLANTED not in out.out + out.err + result[1]
    assert not any(PLANTED.encode() in p.read_bytes() for p in run.rglob("*") if p.is_file())


# -- checkpoints outside the run directory --------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(env: SimpleNamespace) -> tuple[Path, Path]:
    other = env.root / "runs" / "B"
    if not other.exists():
        shutil.copytree(env.run, other)
    return env.run, other


@pytest.mark.parametrize(
    "ckpt",
    [
        "../B/checkpoints/best",
        "../B/checkpoints/last.pt",
        "checkpoints/../../B/checkpoints/last.pt",
        "../../runs/B/checkpoints/best.pt",
    ],
)
def test_relative_checkpoint_outside_the_run_is_refused(two_runs, ckpt: str, monkeypatch) -> None:
    from saltx.run import load_run

    run, _ = two_runs
    monkeypatch.chdir(run)  # the paths resolve (to run B) relative to the run and to here
    result = outcome(lambda: load_run(str(run), ckpt))
    check(
        f"ckpt={ckpt}",
        result,
        r"points outside the run directory.*absolute path",
        kinds=("RunDirError",),
    )


def test_checkpoints_inside_the_run_and_absolute_paths(two_runs, monkeypatch, capsys) -> None:
    from saltx.run import load_run

    run, other = two_runs
    for ckpt in ("best", "last.pt", "checkpoints/last.pt", "checkpoints/best"):
        assert (
            load_run(str(run), ckpt).ckpt_path
            == str(run / "checkpoints" / Path(ckpt).name.removesuffix(".pt")) + ".pt"
        )
    monkeypatch.chdir(run.parent)  # relative to the current directory, inside the run: fine
    assert load_run(str(run), "A/checkpoints/last.pt").ckpt_path.endswith("A/checkpoints/last.pt")
    capsys.readouterr()
    absolute = str(other / "checkpoints" / "last.pt")
    assert load_run(str(run), absolute).ckpt_path == absolute  # explicit: allowed, and said
    out = capsys.readouterr().out
    assert f"checkpoint {absolute} is outside the run directory {run}" in out
    load_run(str(run), str(run / "checkpoints" / "last.pt"))  # absolute, inside: no note
    assert "outside" not in capsys.readouterr().out
