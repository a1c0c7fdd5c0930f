"""Security: pickle-bomb checkpoints, planted secrets, paths from data.

* A checkpoint whose unpickling would run code (``__reduce__`` writing a marker file) is
  refused by every saltx path that loads checkpoints (resume, ``ckpt_path``, evaluation,
  export, the loader helpers), and the marker is never created.
* S3 keys planted in ``data.config_S3`` and ``WANDB_API_KEY`` / AWS keys planted in the
  environment reach no byte of any file a run produces (train with the wandb logger offline,
  evaluate, export), nor its console output.
* Class names from the file (``../../x``) never make saltx write outside the run directory.
"""

from __future__ import annotations

import builtins
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import read_base, write_h5
from relhelp import (
    CONF_DIR,
    child_env,
    compose_train,
    run_child,
    train_overrides,
    tree_files,
    write_tiny_data,
)

from saltx.engine.checkpoint import load_checkpoint
from saltx.io.rundir import load_torch
from saltx.train import train

SHORT = ("trainer.max_epochs=1", "trainer.max_steps=3")


class Bomb:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def write_bombs(folder: Path, marker: Path) -> dict[str, Path]:
    """Pickle bombs in the zip format, torch's legacy format, and as a bare pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model": {"w": torch.zeros(2)}, "state": {"step": 1}, "evil": Bomb(marker)}
    out = {"zip": folder / "bomb_zip.pt", "legacy": folder / "bomb_legacy.pt"}
    torch.save(payload, out["zip"])
    torch.save(payload, out["legacy"], _use_new_zipfile_serialization=False)
    out["pickle"] = folder / "bomb_pickle.pt"
    out["pickle"].write_bytes(pickle.dumps(payload))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("secdata"), {"train": 96, "val": 32, "test": 32})


@pytest.fixture(scope="module")
def trained_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("secrun") / "run"
    train(compose_train(data_dir, out, *SHORT))
    return out


def test_bombs_really_run_code_with_a_plain_pickle_load(tmp_path: Path) -> None:
    """The test payload works: an unsafe load would create the marker."""
    marker = tmp_path / "marker"
    bombs = write_bombs(tmp_path / "b", marker)
    torch.load(bombs["zip"], weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_pickle_bomb_refused_by_every_checkpoint_loader(
    fmt: str, data_dir: Path, trained_run: Path, tmp_path: Path
) -> None:
    from saltx.export import export
    from saltx.run import load_run

    marker = tmp_path / "marker"
    bomb = write_bombs(tmp_path / "bombs", marker)[fmt]

    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(str(bomb))
    with pytest.raises(pickle.UnpicklingError):
        load_torch(bomb)

    # resume: a bomb planted as RUN/checkpoints/last.pt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/last.pt").write_bytes(bomb.read_bytes())
    with pytest.raises(ValueError, match="weights_only"):
        train(compose_train(data_dir, run, *SHORT, "trainer.resume=auto"))
    # ckpt_path pointing at a bomb
    with pytest.raises(ValueError, match="weights_only"):
        train(compose_train(data_dir, tmp_path / "run2", *SHORT, f"ckpt_path={bomb}"))
    # evaluation and export of a run whose checkpoints were replaced by the bomb
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("config.yaml", "metadata.yaml", "norm_dict.yaml", "class_dict.yaml"):
        (victim / name).write_bytes((trained_run / name).read_bytes())
    (victim / "checkpoints").mkdir()
    for name in ("last.pt", "best.pt"):
        (victim / "checkpoints" / name).write_bytes(bomb.read_bytes())
    for ckpt in ("best", "last", str(bomb)):  # the run loader reads with load_checkpoint
        with pytest.raises(ValueError, match="weights_only"):
            load_run(str(victim), ckpt)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        ecfg = compose("export", overrides=[f"run_dir={victim}"])
    with pytest.raises(ValueError, match="weights_only"):
        export(ecfg)
    assert not marker.exists(), "a saltx loader executed code from a checkpoint"


# -- planted secrets ----------------------------------------------------------------------
PUB = "AKIAPLANTEDPUBKEY0042"
SEC = "PLANTED/secret+KEY/9f3a7c1e"
WANDB = "0123456789abcdefPLANTEDWANDBKEY0123456789"
AWS = "PLANTEDAWSSECRET/env/55"
SECRETS = (PUB, SEC, WANDB, AWS)


def _files_with_secrets(root: Path) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):  # checkpoints: look inside every member too
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(n) for n in z.namelist()]
        for secret in SECRETS:
            if any(secret.encode() in b for b in blobs):
                hits.append(f"{path.relative_to(root)}: {secret}")
    return hits


@pytest.mark.slow
def test_planted_secrets_never_reach_run_files(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    from saltx.evaluate import evaluate
    from saltx.export import export

    run = tmp_path / "run"
    s3 = {"use_S3": "true", "pubKey": f"'{PUB}'", "secKey": f"'{SEC}'", "url": "'http://x:9'"}
    overrides = train_overrides(
        data_dir,
        run,
        *SHORT,
        *(f"+data.config_S3.{k}={v}" for k, v in s3.items()),
        "logger=wandb",
        "logger.mode=offline",
    )
    env = child_env(
        WANDB_API_KEY=WANDB,
        AWS_SECRET_ACCESS_KEY=AWS,
        WANDB_DIR=str(run),
        WANDB_SILENT="true",
    )
    proc = run_child([sys.executable, "-m", "saltx.train", *overrides], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for secret in SECRETS:
        assert secret not in proc.stdout and secret not in proc.stderr, secret

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        evaluate(compose("evaluate", overrides=[f"run_dir={run}", "write_tracks=true"]))
        export(compose("export", overrides=[f"run_dir={run}", "validate.trials=1"]))
    assert (run / "network.onnx").is_file()
    assert any((run / "predictions").glob("*.h5"))
    assert (run / "wandb").is_dir(), "the wandb logger wrote nothing: the test saw no logger files"
    assert _files_with_secrets(run) == []
    config = (run / "config.yaml").read_text()
    assert "config_S3" in config  # the block is kept, its keys are not


# -- paths from data ----------------------------------------------------------------------
@pytest.mark.slow
def test_class_names_with_path_parts_stay_in_the_run_dir(tmp_path: Path) -> None:
    from saltx.evaluate import evaluate
    from saltx.export import export

    data = write_tiny_data(tmp_path / "data", {"train": 96, "val": 32, "test": 32})
    names = ["bjets", "cjets", "ujets", "../../../../escaped_by_class_name"]
    for split in ("train", "val", "test"):
        write_h5(data / f"{split}.h5", read_base(data / f"{split}.h5"), class_names=names)
    before = tree_files(tmp_path)
    run = tmp_path / "deep/er/run"
    train(compose_train(data, run, *SHORT, "model.tasks.jet_classification.use_class_dict=false"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        evaluate(compose("evaluate", overrides=[f"run_dir={run}"]))
        export(compose("export", overrides=[f"run_dir={run}", "validate.trials=1"]))
    created = tree_files(tmp_path) - before
    outside = sorted(p for p in created if not p.startswith("deep/er/run/"))
    assert outside == [], f"files written outside the run dir: {outside}"
    assert not list(tmp_path.rglob("escaped_by_class_name*"))
