"""Shared helpers of the reliability tests (``tests/reliability``) and ``scripts/soak.py``.

Tiny configs, tiny synthetic data, subprocess launchers and checkpoint checks. The fault
injection itself lives in :mod:`fault_runner` (a wrapper around ``python -m saltx.train`` /
``python -m saltx.evaluate`` that SIGKILLs itself at a chosen point).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import saltx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONF_DIR = str(Path(saltx.__file__).resolve().parent / "conf")
FAULT_RUNNER = str(HERE / "fault_runner.py")

#: 256 train jets / 32 = 8 batches per epoch, 3 epochs = 24 optimizer steps.
TINY: tuple[str, ...] = (
    "+experiment=demo",
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.out_dim=16",
    "model.init_nets.tracks.hidden_layers=[16]",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.val_check_interval=5",
    "trainer.performance_writer.std_out=false",
)
TINY_COUNTS = {"train": 256, "val": 64, "test": 64}
TOTAL_STEPS = 24


def write_tiny_data(out_dir: Path, counts: Mapping[str, int] | None = None, seed: int = 0) -> Path:
    """Write tiny ``{train,val,test}.h5`` + dicts (10 track slots) into ``out_dir``."""
    from saltx.data.synthetic import write_dataset

    write_dataset(out_dir, dict(counts or TINY_COUNTS), seed=seed, n_tracks=10, n_electrons=4)
    return out_dir


def train_overrides(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """Hydra overrides of the tiny run: data in ``data_dir``, run dir ``out``."""
    return [*TINY, f"paths.data_dir={data_dir}", f"paths.output_dir={out}", *extra]


def compose_train(data_dir: Path, out: Path, *extra: str) -> Any:
    """The composed, resolved ``train`` config of the tiny run."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import saltx.config  # noqa: F401  (schemas and resolvers)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=train_overrides(data_dir, out, *extra))
    OmegaConf.resolve(cfg)
    return cfg


def child_env(fault: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a child process: one thread, optional ``SALTX_TEST_FAULT``."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "HYDRA_FULL_ERROR": "1",
        }
    )
    env.pop("SALTX_TEST_FAULT", None)
    if fault:
        env["SALTX_TEST_FAULT"] = fault
    env.update(extra)
    return env


def runner_cmd(entry: str, overrides: Sequence[str]) -> list[str]:
    """Command line of :mod:`fault_runner` for ``entry`` (``train`` or ``evaluate``)."""
    return [sys.executable, FAULT_RUNNER, entry, *overrides]


def run_child(
    cmd: Sequence[str], env: Mapping[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run a child to completion (or death); ``timeout`` only guards against hangs."""
    return subprocess.run(
        list(cmd), env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Every ``*.pt`` file of ``run_dir/checkpoints``."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary files a killed atomic write left in ``run_dir`` (never under a final name)."""
    return sorted(p for p in Path(run_dir).rglob(".*.tmp") if p.is_file())


def corrupt_checkpoints(run_dir: Path) -> list[tuple[Path, str]]:
    """Checkpoints of ``run_dir`` that do not load with ``torch.load(weights_only=True)``
    as a saltx checkpoint dict; empty when all are sound."""
    import torch

    bad = []
    for path in checkpoint_files(run_dir):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(ckpt, dict) or not {"model", "state", "optimizer"} <= set(ckpt):
                bad.append((path, f"not a checkpoint dict: {type(ckpt).__name__}"))
        except Exception as err:  # any failure to load is a corrupt checkpoint
            bad.append((path, f"{type(err).__name__}: {err}"))
    return bad


def load_ckpt(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Bit-identical model weights, optimizer moments and counters of two checkpoints."""
    import torch

    assert a["state"] == b["state"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"weights differ: {key}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        for name, value in sa[pid].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, sb[pid][name]), f"optimizer state {pid}.{name} differs"


def tree_files(root: Path, exclude: Iterable[Path] = ()) -> set[str]:
    """Relative paths of every file under ``root`` outside the ``exclude`` folders."""
    skip = [Path(p).resolve() for p in exclude]
    out = set()
    for path in Path(root).rglob("*"):
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skip):
            continue
        if path.is_file():
            out.add(str(path.relative_to(root)))
    return out
