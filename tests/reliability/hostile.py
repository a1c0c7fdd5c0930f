"""Building hostile h5 files from a valid tiny file, and pushing them through saltx.

:func:`consume` runs what training runs on a file (``saltx.assemble.build``: class names,
norm dict, model, datasets, loaders) and then forward passes with losses on the first
batches of both loaders. A hostile file must either go through with finite losses or
stop with a :class:`~saltx.errors.DataError` / ``ValueError`` whose message says what
is wrong; any other exception (``IndexError`` from torch, ``KeyError``, a bare
``OSError``...) is a failure of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import OmegaConf

#: Inputs of the demo model (data/variables/gn2.yaml) and the labels its tasks read.
JET_VARS = ("pt_btagJes", "eta_btagJes")
TRACK_VARS = ("d0", "z0SinTheta", "dphi", "deta", "qOverP", "numberOfPixelHits")
JET_LABELS = ("flavour_label",)
TRACK_LABELS = ("ftagTruthOriginLabel", "ftagTruthVertexIndex")
CLASS_NAMES = ["bjets", "cjets", "ujets", "taujets"]


def read_base(path: Path) -> dict[str, np.ndarray]:
    """``{"jets": (N,), "tracks": (N, T)}`` structured arrays of a valid file."""
    with h5py.File(path, "r") as f:
        return {"jets": f["jets"][:], "tracks": f["tracks"][:]}


def write_h5(
    path: Path,
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    class_names: Any = CLASS_NAMES,
) -> Path:
    """Write datasets (and ``jets.attrs["flavour_label"]`` unless ``class_names`` is None)."""
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr)
        if class_names is not None and "jets" in f:
            f["jets"].attrs["flavour_label"] = class_names
        for key, value in (attrs or {}).items():
            f["jets"].attrs[key] = value
    return path


def retype(arr: np.ndarray, field: str, dtype: Any) -> np.ndarray:
    """A copy of ``arr`` with ``field`` stored as ``dtype`` (values cast unsafely)."""
    descr = [(n, dtype if n == field else arr.dtype[n]) for n in arr.dtype.names]
    out = np.empty(arr.shape, dtype=descr)
    for n in arr.dtype.names:
        if n == field:
            out[n] = arr[n].astype(dtype) if np.dtype(dtype).kind != "S" else b"x"
        else:
            out[n] = arr[n]
    return out


def drop(arr: np.ndarray, field: str) -> np.ndarray:
    """A copy of ``arr`` without ``field``."""
    keep = [n for n in arr.dtype.names if n != field]
    out = np.empty(arr.shape, dtype=[(n, arr.dtype[n]) for n in keep])
    for n in keep:
        out[n] = arr[n]
    return out


class Consumer:
    """Runs the training build on a train file with a fixed valid validation file.

    Parameters
    ----------
    cfg
        A composed tiny ``train`` config (see ``relhelp.compose_train``).
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __call__(self, train_file: Path, *, val_file: Path | None = None, **data: Any) -> dict:
        """Build and run every batch of both loaders; returns the last losses."""
        from saltx.assemble import build
        from saltx.engine.distributed import DistInfo

        cfg = self.cfg.copy()
        OmegaConf.set_struct(cfg, False)
        cfg.data.train_file = str(train_file)
        if val_file is not None:
            cfg.data.val_file = str(val_file)
        for key, value in data.items():
            OmegaConf.update(cfg, f"data.{key}", value, merge=False)
        torch.manual_seed(0)
        parts = build(cfg, DistInfo())
        losses: dict = {}
        try:
            for loader in (parts.train_loader, parts.val_loader):
                for batch in loader:
                    for x in batch.inputs.values():
                        assert torch.isfinite(x).all(), "non-finite input reached the model"
                    _, losses = parts.model(batch.inputs, batch.masks, batch.labels)
                    for name, value in losses.items():
                        assert torch.isfinite(value), f"loss {name} is {value}"
        finally:
            for loader in (parts.train_loader, parts.val_loader):
                ds = getattr(loader, "dataset", None)
                close = getattr(getattr(ds, "dataset", ds), "close", None)
                if close is not None:
                    close()
        return {k: float(v.detach()) for k, v in losses.items()}


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    """``("ok", "")`` or ``(exception type name, message)`` of ``fn()``."""
    try:
        fn()
    except Exception as err:
        return type(err).__name__, str(err)
    return "ok", ""


# -- damaged bytes (run in a child process, so that a crash of libhdf5 is caught) -------------
def damaged_variants(size: int, seed: int = 0) -> list[tuple[str, str, list[int]]]:
    """``(label, kind, args)`` of truncations, byte flips and zeroed blocks of a file."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, list[int]]] = []
    for n in sorted({0, 1, 8, 100, 512, 2048, size // 4, size // 2, 9 * size // 10, size - 1}):
        out.append((f"truncated to {n} of {size} bytes", "truncate", [n]))
    for _ in range(8):
        offsets = sorted(int(x) for x in rng.integers(0, size, int(rng.integers(1, 64))))
        out.append((f"{len(offsets)} random bytes flipped", "flip", offsets))
    for start in (0, 512, 2048, size // 3, size // 2, size - 4096):
        out.append((f"4 KiB zeroed at byte {start}", "zero", [max(0, start)]))
    return out


def damage(src: Path, dst: Path, kind: str, args: list[int]) -> Path:
    """Write a damaged copy of ``src`` to ``dst``."""
    data = bytearray(Path(src).read_bytes())
    if kind == "truncate":
        data = data[: args[0]]
    elif kind == "flip":
        for off in args:
            data[off] ^= 0xFF
    elif kind == "zero":
        data[args[0] : args[0] + 4096] = bytes(len(data[args[0] : args[0] + 4096]))
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def damaged_main(data_dir: str, work: str, log: str) -> None:
    """Child process: run every damaged variant of ``data_dir/train.h5``; one JSON line each.

    A line ``{"start": label}`` is written (and flushed) before each case, so that a crash
    of the process points at the case that caused it.
    """
    import json

    from relhelp import compose_train

    cfg = compose_train(Path(data_dir), Path(work) / "run", "data.batch_size=16")
    run = Consumer(cfg)
    src = Path(data_dir) / "train.h5"
    with open(log, "a") as f:
        for i, (label, kind, args) in enumerate(damaged_variants(src.stat().st_size)):
            f.write(json.dumps({"start": label}) + "\n")
            f.flush()
            path = damage(src, Path(work) / f"damaged_{i}.h5", kind, args)
            kind_, message = outcome(lambda p=path: run(p))
            f.write(json.dumps({"case": label, "type": kind_, "message": message}) + "\n")
            f.flush()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    damaged_main(*sys.argv[1:4])
