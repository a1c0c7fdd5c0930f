"""read_class_names: the class names stored as a file attribute."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_data_helpers import write_h5

from saltx.data.labels import read_class_names
from saltx.errors import DataError


@pytest.mark.parametrize(
    "stored",
    [
        ["bjets", "cjets", "ujets"],
        [b"bjets", b"cjets", b"ujets"],
        np.array(["bjets", "cjets", "ujets"], dtype="S"),
    ],
)
def test_read_class_names_forms(tmp_path, stored):
    path = write_h5(tmp_path / "c.h5", class_names=stored, n_jets=4)
    assert read_class_names(path) == ["bjets", "cjets", "ujets"]


def test_read_class_names_errors(tmp_path):
    path = write_h5(tmp_path / "c.h5", class_names=None, n_jets=4)
    with pytest.raises(DataError, match=r"no attribute 'flavour_label' on dataset 'jets'"):
        read_class_names(path)
    with pytest.raises(DataError, match=r"no dataset 'events'"):
        read_class_names(path, dataset="events")
    with h5py.File(path, "a") as f:
        f["jets"].attrs["R10TruthLabel"] = ["hbb", "top"]
    assert read_class_names(path, label="R10TruthLabel") == ["hbb", "top"]
    with pytest.raises(DataError, match=r"not found"):
        read_class_names(tmp_path / "missing.h5")
