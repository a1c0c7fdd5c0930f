"""apply_label_map (one vectorised lookup) and read_class_names (file attribute)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from test_data_helpers import write_h5

from saltx.data.labels import apply_label_map, read_class_names
from saltx.errors import DataError


def naive_map(values, mapping):
    return [mapping.get(v, -1) for v in values]


def test_swap_is_not_collapsed_and_input_untouched():
    labels = torch.tensor([0, 1, 1, 0, 2])
    out = apply_label_map(labels, {0: 1, 1: 0, 2: 2})
    assert out.tolist() == [1, 0, 0, 1, 2]
    assert labels.tolist() == [0, 1, 1, 0, 2]
    assert out.dtype == torch.long


def test_hadron_ids_to_classes_numpy_and_2d():
    mapping = {5: 0, 4: 1, 0: 2, 15: 3}
    raw = np.array([[5, 4, 0], [15, 5, -1]], dtype=np.int32)
    out = apply_label_map(raw, mapping)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3)
    assert out.tolist() == [[0, 1, 2], [3, 0, -1]]


def test_matches_naive_reference_on_random_values():
    rng = np.random.default_rng(0)
    keys = rng.choice(50, size=10, replace=False)
    mapping = {int(k): int(v) for k, v in zip(keys, rng.permutation(10))}
    values = rng.choice(np.concatenate([keys, [-1, -2]]), size=200)
    assert apply_label_map(values, mapping).tolist() == naive_map(values.tolist(), mapping)


def test_padding_passes_through_as_minus_one():
    out = apply_label_map(torch.tensor([-2, -1, 3]), {3: 0})
    assert out.tolist() == [-1, -1, 0]
    assert apply_label_map(torch.tensor([-1]), {-1: 4}).tolist() == [4]  # mapped explicitly


def test_unmapped_values_name_the_label_and_values():
    with pytest.raises(DataError, match=r"label 'HadronConeExclTruthLabelID' has values \[7, 9\]"):
        apply_label_map(np.array([5, 7, 9, 7]), {5: 0}, name="HadronConeExclTruthLabelID")
    with pytest.raises(DataError, match=r"values \[-3\]"):
        apply_label_map(np.array([-3]), {5: 0})
    with pytest.raises(DataError, match="integer"):
        apply_label_map(np.array([0.5]), {0: 0})
    with pytest.raises(DataError, match="empty"):
        apply_label_map(np.array([0]), {})


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
