"""Evaluation helpers against hand-computed cases: discriminants, rejections, track metrics,
prediction names and the atomic h5 writer."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from saltx.eval import metrics as M
from saltx.eval.predictions import (
    H5Appender,
    join_fields,
    pad_to,
    prediction_file_name,
    sample_name,
)

CLASSES = ["bjets", "cjets", "ujets", "taujets"]


def test_prob_suffix_follows_ftag_and_strips_jets():
    assert [M.prob_suffix(c) for c in CLASSES] == ["pb", "pc", "pu", "ptau"]
    assert M.prob_suffix("hbb") == "phbb"
    assert M.prob_suffix("taus") == "ptaus"  # Salt's PredictionWriter name for unknown classes
    assert M.prob_suffix("topjets") == "ptop"


def test_b_discriminant_by_hand():
    probs = {
        "bjets": np.array([0.5, 0.1]),
        "cjets": np.array([0.25, 0.1]),
        "ujets": np.array([0.25, 0.8]),
    }
    fr = M.fractions_for("bjets", list(probs), 0.2)
    assert fr == {"fc": 0.2, "fu": 0.8}
    d = M.discriminant(probs, "bjets", fr)
    # log(0.5 / (0.2*0.25 + 0.8*0.25)) = log 2 ; log(0.1 / (0.02 + 0.64))
    np.testing.assert_allclose(d, [math.log(2.0), math.log(0.1 / 0.66)], rtol=1e-9)


def test_discriminant_with_tau_fraction_and_c_tagging():
    probs = {c: np.array([v]) for c, v in zip(CLASSES, [0.4, 0.2, 0.2, 0.2], strict=True)}
    fr = M.fractions_for("bjets", CLASSES, 0.2, f_tau=0.1)
    assert fr == pytest.approx({"fc": 0.2, "fu": 0.7, "ftau": 0.1})
    # denominator 0.2*0.2 + 0.1*0.2 + 0.7*0.2 = 0.2
    np.testing.assert_allclose(M.discriminant(probs, "bjets", fr), [math.log(2.0)])
    frc = M.fractions_for("cjets", CLASSES, 0.3)
    # c-tagging: log(0.2 / (0.3*0.4 + 0.7*0.2))
    np.testing.assert_allclose(M.discriminant(probs, "cjets", frc), [math.log(0.2 / 0.26)])


def test_fractions_out_of_range_raise():
    with pytest.raises(ValueError, match="fractions"):
        M.fractions_for("bjets", CLASSES, 1.2)
    with pytest.raises(ValueError, match="f_tau"):
        M.fractions_for("bjets", CLASSES, 0.5, f_tau=0.6)


def test_rejection_by_hand():
    sig = np.array([1.0, 2.0, 3.0, 4.0])
    bkg = np.array([0.0, 1.0, 2.0, 3.0])
    # 50% signal efficiency cuts at 2.5 (interpolated percentile): 1 of 4 background passes
    # 75% cuts at 1.75: 2 of 4 pass
    np.testing.assert_allclose(M.rejection(sig, bkg, [0.5, 0.75]), [4.0, 2.0])
    assert math.isinf(M.rejection(sig, np.array([-1.0]), [0.5])[0])
    assert math.isnan(M.rejection(sig, np.array([]), [0.5])[0])


def test_rejection_table_uses_truth_names():
    truth = np.array(["bjets"] * 4 + ["ujets"] * 4 + ["cjets"] * 2)
    pb = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.65, 0.5, 0.05])
    probs = {"bjets": pb, "cjets": np.full(10, 0.0), "ujets": 1 - pb}
    fr = M.fractions_for("bjets", list(probs), 0.2)
    table = M.rejection_table(probs, truth, "bjets", fr, [0.5])
    # D_b is monotonic in pb: cut between 0.7 and 0.8 -> no light jet passes, no c jet passes
    assert set(table) == {"cjets", "ujets"}
    assert math.isinf(table["ujets"]["50"])
    table = M.rejection_table(probs, truth, "bjets", fr, [1.0])
    # 100% efficiency cuts at the lowest b score (0.6): only the light jet with 0.65 passes
    assert table["ujets"]["100"] == pytest.approx(4.0)


def test_roc_curve_is_monotonic():
    rng = np.random.default_rng(0)
    effs, rej = M.roc_curve(rng.normal(2, 1, 2000), rng.normal(0, 1, 2000), num=20)
    assert effs.shape == rej.shape == (20,)
    assert np.all(np.diff(rej) <= 1e-9)


def test_accuracy_counts_ignore_padded():
    probs = np.zeros((1, 3, 2))
    probs[0, :, 1] = [0.9, 0.1, 0.9]
    probs[0, :, 0] = 1 - probs[0, :, 1]
    truth = np.array([[1, 1, 0]])
    valid = np.array([[True, True, False]])
    assert M.accuracy_counts(probs, truth, valid) == (1, 2)


def test_pair_counts_by_hand():
    pred = np.array([[0, 0, 2, -1]])
    true = np.array([[5, 5, 5, 5]])
    valid = np.array([[True, True, True, False]])
    # 6 ordered pairs of valid tracks; all truly same-vertex; predicted: (0,1) and (1,0)
    assert M.pair_counts(pred, true, valid) == (2, 0, 4)
    assert M.precision_recall(2, 0, 4) == (1.0, pytest.approx(1 / 3))
    # negative truth index = no vertex: predicted pairs become false positives
    assert M.pair_counts(pred, np.array([[-1, -1, -1, -1]]), valid) == (0, 2, 0)
    assert math.isnan(M.precision_recall(0, 0, 0)[0])


def dense_pair_counts(pred, true, valid):
    """Naive reference: the (B, N, N) pair matrices."""
    n = valid.shape[1]
    pair_valid = valid[:, :, None] & valid[:, None, :] & ~np.eye(n, dtype=bool)
    p = (pred[:, :, None] == pred[:, None, :]) & pair_valid
    t = (true[:, :, None] == true[:, None, :]) & (true[:, :, None] >= 0) & pair_valid
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def test_pair_counts_match_dense_reference():
    rng = np.random.default_rng(4)
    for b, n in ((1, 1), (7, 5), (50, 40)):
        pred = rng.integers(-1, 4, size=(b, n))
        true = rng.integers(-2, 3, size=(b, n))
        valid = rng.random((b, n)) < 0.7
        assert M.pair_counts(pred, true, valid) == dense_pair_counts(pred, true, valid)
    empty = np.zeros((3, 4), dtype=bool)
    assert M.pair_counts(np.zeros((3, 4), int), np.zeros((3, 4), int), empty) == (0, 0, 0)
    assert M.pair_counts(np.zeros((0, 4), int), np.zeros((0, 4), int), empty[:0]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("path", "sample"),
    [
        # Salt's rule: the 4th `_` token of a 4-token stem, else the whole stem
        ("dir/pp_output_test_ttbar.h5", "ttbar"),
        ("pp_output_test_zprime.h5", "zprime"),
        ("s3://bucket/x/test_zprime.h5", "test_zprime"),
        ("data/test.h5", "test"),
        ("pp_output_test_ttbar_lowpt.h5", "pp_output_test_ttbar_lowpt"),
        ("a_b_c_d.h5", "d"),
    ],
)
def test_sample_name(path, sample):
    assert sample_name(path) == sample
    assert prediction_file_name("best", path) == f"best__test_{sample}.h5"
    assert prediction_file_name("best", path, "m40") == f"best__test_{sample}_m40.h5"


def test_join_and_pad():
    copied = np.zeros(2, dtype=[("pt", "f4"), ("eta", "f4")])
    copied["pt"] = [1, 2]
    out = join_fields(copied, {"GN2_pb": np.array([0.5, 0.25], dtype=np.float32)})
    assert out.dtype.names == ("pt", "eta", "GN2_pb")
    np.testing.assert_array_equal(out["pt"], [1, 2])
    with pytest.raises(ValueError, match="already exist"):
        join_fields(copied, {"pt": np.zeros(2)})
    padded = pad_to(np.array([[1, 2]]), 4, -1)
    np.testing.assert_array_equal(padded, [[1, 2, -1, -1]])


def test_h5_appender_is_atomic(tmp_path):
    final = tmp_path / "p" / "best__test_x.h5"
    rows = np.zeros(3, dtype=[("a", "f4")])
    w = H5Appender(final, chunk_rows=2)
    w.append("jets", rows)
    w.append("jets", rows)
    assert not final.exists()  # only the temporary file exists while writing
    w.commit()
    with h5py.File(final) as f:
        assert f["jets"].shape == (6,)
    w2 = H5Appender(tmp_path / "p" / "other.h5")
    w2.append("jets", rows)
    w2.abort()
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["best__test_x.h5"]
