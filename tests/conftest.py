"""Shared pytest fixtures: tiny synthetic datasets in the Salt/UPP layout.

``synthetic_dir`` is written once per session (600 train / 300 val / 300 test jets);
``tiny_data`` writes a fresh dataset into the test's own ``tmp_path`` on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from saltx.data.synthetic import write_dataset

SYNTHETIC_COUNTS = {"train": 600, "val": 300, "test": 300}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with ``{train,val,test}.h5``, ``norm_dict.yaml`` and ``class_dict.yaml``.

    Written once per session (seed 0, 40 track and 10 electron slots). Treat it as read-only.
    """
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(out, SYNTHETIC_COUNTS, seed=0)
    return out


@pytest.fixture
def tiny_data(tmp_path: Path) -> Callable[..., dict[str, Path]]:
    """Factory writing a small synthetic dataset into this test's ``tmp_path``.

    Call ``tiny_data(n_jets=200, seed=0, n_tracks=40, n_electrons=10, subdir="data", **kw)``;
    extra keywords go to :func:`saltx.data.synthetic.write_dataset`. ``n_jets`` is the total
    (split 0.8/0.1/0.1) or a mapping ``{split: n}``. Returns ``{split: path, "norm_dict": path,
    "class_dict": path}``.
    """

    def make(
        n_jets: int | dict[str, int] = 200,
        seed: int = 0,
        n_tracks: int = 40,
        n_electrons: int = 10,
        subdir: str = "data",
        **kwargs,
    ) -> dict[str, Path]:
        return write_dataset(
            tmp_path / subdir,
            n_jets,
            seed=seed,
            n_tracks=n_tracks,
            n_electrons=n_electrons,
            **kwargs,
        )

    return make
