"""The synthetic generator's ``difficulty`` option: default output unchanged, harder jets."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from test_synthetic import written

from saltx.data import synthetic as syn


def _max_sd0_auc(sample: dict[str, np.ndarray]) -> float:
    """b against light ROC AUC of the largest signed d0 significance of a jet."""
    jets, tracks = sample["jets"], sample["tracks"]
    score = np.where(tracks["valid"], tracks["IP3D_signed_d0_significance"], -99.0).max(axis=1)
    sel = np.isin(jets["flavour_label"], (0, 2))
    score, positive = score[sel], jets["flavour_label"][sel] == 0
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_difficulty_one_is_the_default_stream(tmp_path):
    default = written(tmp_path / "a.h5", 300, seed=4, n_tracks=15, n_electrons=4)
    explicit = written(tmp_path / "b.h5", 300, seed=4, n_tracks=15, n_electrons=4, difficulty=1.0)
    for name in default:
        assert default[name].tobytes() == explicit[name].tobytes(), name


def test_harder_jets_are_less_separable_with_the_same_truth(tmp_path):
    easy = written(tmp_path / "easy.h5", 3000, seed=9)
    hard = written(tmp_path / "hard.h5", 3000, seed=9, difficulty=2.0)
    # the same jets and truth (the random stream does not depend on the difficulty)
    assert np.array_equal(easy["jets"]["flavour_label"], hard["jets"]["flavour_label"])
    assert np.allclose(easy["jets"]["pt"], hard["jets"]["pt"])
    assert _max_sd0_auc(hard) < _max_sd0_auc(easy) - 0.03
    # prompt tracks stay ~unit-width in significance; the core resolution doubles
    for sample, scale in ((easy, 1.0), (hard, 2.0)):
        t = sample["tracks"]
        prim = t["valid"] & (t["ftagTruthOriginLabel"] == syn.PRIMARY)
        ratio = np.median(np.abs(t["d0"][prim]) / np.abs(t["IP3D_signed_d0_significance"][prim]))
        assert ratio > 0.01 * scale


def test_difficulty_is_recorded_only_when_set(tmp_path):
    syn.write_split(tmp_path / "a.h5", 50, seed=1, n_tracks=8, n_electrons=2)
    syn.write_split(tmp_path / "b.h5", 50, seed=1, n_tracks=8, n_electrons=2, difficulty=2.5)
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        assert "difficulty" not in json.loads(fa.attrs["config"])
        assert json.loads(fb.attrs["config"])["difficulty"] == 2.5


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_difficulty_is_an_error(bad, tmp_path):
    with pytest.raises(ValueError, match="difficulty"):
        syn.write_dataset(tmp_path, 30, difficulty=bad)
    assert not (tmp_path / "train.h5").exists()


def test_cli_difficulty(tmp_path):
    syn.main(["--out", str(tmp_path), "--n-jets", "40", "--difficulty", "1.5"])
    with h5py.File(tmp_path / "train.h5") as f:
        assert json.loads(f.attrs["config"])["difficulty"] == 1.5
