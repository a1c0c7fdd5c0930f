"""Tiny Salt-layout h5 files for the data tests (independent of saltx.data.synthetic).

Values are simple functions of (jet, slot) so tests can check exactly what was read:
``tracks.d0[j, t] = 100 * j + t`` for valid slots; padded slots hold NaN (floats) or -1.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

JET_DTYPE = np.dtype(
    [
        ("pt_btagJes", "f4"),
        ("eta_btagJes", "f4"),
        ("mass", "f4"),
        ("flavour_label", "i4"),
        ("HadronConeExclTruthLabelID", "i4"),
        ("weight", "f4"),
        ("n_tracks", "i4"),
    ]
)
TRACK_DTYPE = np.dtype(
    [
        ("d0", "f4"),
        ("z0SinTheta", "f4"),
        ("numberOfPixelHits", "u1"),
        ("pt", "f4"),
        ("eta", "f4"),
        ("phi", "f4"),
        ("subjetIndex", "i4"),
        ("ftagTruthOriginLabel", "i4"),
        ("ftagTruthVertexIndex", "i4"),
        ("valid", "?"),
    ]
)
ELECTRON_DTYPE = np.dtype(
    [("pt", "f4"), ("eta", "f4"), ("ftagTruthOriginLabel", "i4"), ("valid", "?")]
)
HADRON_IDS = np.array([5, 4, 0, 15])


def make_arrays(
    n_jets: int = 20, n_tracks: int = 6, n_electrons: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """Structured arrays ``jets (N,)``, ``tracks (N, T)``, ``electrons (N, M)``."""
    rng = np.random.default_rng(seed)
    jets = np.zeros(n_jets, JET_DTYPE)
    j = np.arange(n_jets)
    jets["pt_btagJes"] = 20_000 + 1000 * j
    jets["eta_btagJes"] = np.linspace(-2, 2, n_jets)
    jets["mass"] = np.where(j % 3 == 0, 40.0, np.nan)  # background jets: no mass
    jets["flavour_label"] = j % 4
    jets["HadronConeExclTruthLabelID"] = HADRON_IDS[j % 4]
    jets["weight"] = 0.5 + j
    counts = 1 + (j % n_tracks)  # 1..T valid tracks
    jets["n_tracks"] = counts
    tracks = np.zeros((n_jets, n_tracks), TRACK_DTYPE)
    slot = np.arange(n_tracks)
    valid = slot[None, :] < counts[:, None]
    tracks["valid"] = valid
    tracks["d0"] = 100 * j[:, None] + slot[None, :]
    tracks["z0SinTheta"] = rng.normal(size=(n_jets, n_tracks))
    tracks["numberOfPixelHits"] = 1 + slot[None, :] % 5
    tracks["pt"] = 1000.0 * (1 + slot[None, :])
    tracks["eta"] = 0.1 * slot[None, :]
    tracks["phi"] = -0.05 * slot[None, :]
    tracks["subjetIndex"] = slot[None, :] % 2
    tracks["ftagTruthOriginLabel"] = (j[:, None] + slot[None, :]) % 8
    tracks["ftagTruthVertexIndex"] = slot[None, :] // 2
    for name in ("d0", "z0SinTheta", "pt", "eta", "phi"):
        tracks[name][~valid] = np.nan
    for name in ("subjetIndex", "ftagTruthOriginLabel", "ftagTruthVertexIndex"):
        tracks[name][~valid] = -1
    electrons = np.zeros((n_jets, n_electrons), ELECTRON_DTYPE)
    e_valid = np.arange(n_electrons)[None, :] < (j % (n_electrons + 1))[:, None]
    electrons["valid"] = e_valid
    electrons["pt"] = np.where(e_valid, 5000.0, np.nan)
    electrons["eta"] = np.where(e_valid, 0.5, np.nan)
    electrons["ftagTruthOriginLabel"] = np.where(e_valid, 3, -1)
    return {"jets": jets, "tracks": tracks, "electrons": electrons}


def write_h5(
    path: Path,
    arrays: dict[str, np.ndarray] | None = None,
    class_names: list | np.ndarray | None = ("bjets", "cjets", "ujets", "taujets"),
    **kwargs,
) -> Path:
    """Write structured arrays (default :func:`make_arrays`) as top-level datasets."""
    arrays = make_arrays(**kwargs) if arrays is None else arrays
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr)
        if class_names is not None and "jets" in f:
            f["jets"].attrs["flavour_label"] = class_names
    return Path(path)
