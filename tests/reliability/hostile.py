"""Building hostile h5 files from a valid tiny file, and pushing them through saltx.

:func:`consume` runs what training runs on a file (``saltx.train.build``: class names,
norm dict, model, datasets, loaders) and then forward passes with losses on the first
batches of both loaders. A hostile file must either go through with finite losses or
stop with a :class:`~saltx.data.errors.DataError` / ``ValueError`` whose message says what
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
        from saltx.engine.distributed import DistInfo
        from saltx.train import build

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
