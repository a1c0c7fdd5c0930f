"""Norm dicts and class dicts: loading, validation and the two CLIs."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from test_data_helpers import make_arrays, write_h5

from saltx.data import class_weights, norm
from saltx.errors import DataError

VARS = {"jets": ["pt_btagJes"], "tracks": ["d0", "pt"], "GLOBAL": ["eta_btagJes"]}
GOOD = {
    "jets": {"pt_btagJes": {"mean": 1.0, "std": 2.0}, "eta_btagJes": {"mean": 0, "std": 1}},
    "tracks": {"d0": {"mean": 0.0, "std": 1.0}, "pt": {"mean": 5.0, "std": 3.0}},
}


def test_load_norm_dict(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert norm.load_norm_dict(str(path)) == GOOD
    with pytest.raises(DataError, match=r"not found"):
        norm.load_norm_dict(str(tmp_path / "missing.yaml"))
    path.write_text("- just a list")
    with pytest.raises(DataError, match=r"must map"):
        norm.load_norm_dict(str(path))


def test_norm_cli_pooled_stats_over_valid(tmp_path):
    arrays = make_arrays(n_jets=57, n_tracks=6)
    arrays["tracks"]["z0SinTheta"][3, 0] = np.nan  # a NaN in a valid slot is ignored
    path = write_h5(tmp_path / "d.h5", arrays)
    out = tmp_path / "norm.yaml"
    norm.main(["--file", str(path), "--out", str(out), "--variables", "tracks=d0,z0SinTheta"])
    got = yaml.safe_load(out.read_text())
    valid = arrays["tracks"]["valid"]
    for var in ("d0", "z0SinTheta"):
        x = arrays["tracks"][var][valid].astype(np.float64)
        assert got["tracks"][var]["mean"] == pytest.approx(np.nanmean(x), rel=1e-9)
        assert got["tracks"][var]["std"] == pytest.approx(np.nanstd(x), rel=1e-9)
    small = norm.compute_norm_dict(path, {"tracks": ["d0"]}, batch_size=4)  # pooled batches
    assert small["tracks"]["d0"]["std"] == pytest.approx(got["tracks"]["d0"]["std"], rel=1e-9)
    part = norm.compute_norm_dict(path, {"jets": ["pt_btagJes"]}, num=10)
    assert part["jets"]["pt_btagJes"]["mean"] == pytest.approx(24_500)


def test_norm_cli_defaults_and_errors(tmp_path, capsys):
    arrays = make_arrays(n_jets=20, n_tracks=4)
    path = write_h5(tmp_path / "d.h5", arrays)
    result = norm.compute_norm_dict(path)
    assert set(result) == {"jets", "tracks", "electrons"}
    assert "pt_btagJes" in result["jets"] and "valid" not in result["tracks"]
    assert "eta" not in result["electrons"]  # constant (std 0): skipped with a warning
    assert "skipping 'electrons.eta'" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"cannot normalise 'electrons\.eta'"):
        norm.compute_norm_dict(path, {"electrons": ["eta"]})
    with pytest.raises(DataError, match=r"\['nope'\] not in dataset 'tracks'"):
        norm.compute_norm_dict(path, {"tracks": ["nope"]})
    with pytest.raises(DataError, match=r"DATASET=var1"):
        norm.parse_variables(["tracks"])


def test_class_weights_formula():
    assert class_weights.class_weights({0: 10, 1: 30, 2: 60}) == [6.0, 2.0, 1.0]
    assert class_weights.class_weights({3: 3, -1: 1}) == [3.0, 1.0]  # by sorted label value
    # classes given: in that order, an absent one gets the largest present weight
    assert class_weights.class_weights({0: 10, 2: 5}, classes=[0, 1, 2]) == [1.0, 2.0, 2.0]
    assert class_weights.class_weights({}, classes=[0, 1]) == [1.0, 1.0]


def test_class_dict_cli(tmp_path):
    arrays = make_arrays(n_jets=40, n_tracks=5)
    path = write_h5(tmp_path / "d.h5", arrays)
    out = tmp_path / "class.yaml"
    class_weights.main(["--file", str(path), "--out", str(out)])
    got = class_weights.load_class_dict(str(out))
    assert "ftagTruthVertexIndex" not in got["tracks"]  # skipped like UPP
    assert "valid" not in got["tracks"]
    labels = arrays["jets"]["flavour_label"]
    _, counts = np.unique(labels, return_counts=True)
    w = counts.sum() / counts
    assert got["jets"]["flavour_label"] == [round(float(x), 2) for x in w / w.min()]
    origin = arrays["tracks"]["ftagTruthOriginLabel"][arrays["tracks"]["valid"]]
    values, counts = np.unique(origin, return_counts=True)
    w = counts.sum() / counts
    assert got["tracks"]["ftagTruthOriginLabel"] == [round(float(x), 2) for x in w / w.min()]
    assert -1 not in values  # padded slots are not counted
    assert min(got["tracks"]["ftagTruthOriginLabel"]) == 1.0
    chosen = class_weights.compute_class_dict(path, {"tracks": ["ftagTruthOriginLabel"]})
    assert list(chosen) == ["tracks"]
    with pytest.raises(DataError, match=r"not found"):
        class_weights.load_class_dict(str(tmp_path / "missing.yaml"))
