"""Tests of the synthetic Salt/UPP-style data generator."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml

from saltx.data import synthetic as syn

FLAVOUR_INDEX = {name: i for i, name in enumerate(syn.FLAVOURS)}


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Rank-based ROC AUC (ties broken by order; fine for continuous scores)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    n_pos = positive.sum()
    n_neg = len(score) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two structured arrays (NaN == NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def written(path, n_jets: int, **kwargs) -> dict[str, np.ndarray]:
    """``n_jets`` jets of one split as :func:`syn.write_split` writes them, read back.

    Returns ``{"jets": (N,), "tracks": (N, T), "electrons": (N, M)}`` structured arrays.
    """
    syn.write_split(path, n_jets, compression=None, **kwargs)
    with h5py.File(path) as f:
        return {name: f[name][:] for name in ("jets", "tracks", "electrons")}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, np.ndarray]:
    """4000 jets, shared by the physics checks of this module."""
    return written(tmp_path_factory.mktemp("sample") / "train.h5", 4000, seed=11)


# ------------------------------------------------------------------------------ layout


def test_files_and_datasets(synthetic_dir):
    for split, n in {"train": 600, "val": 300, "test": 300}.items():
        with h5py.File(synthetic_dir / f"{split}.h5", "r") as f:
            assert set(f.keys()) == {"jets", "tracks", "electrons"}
            assert f["jets"].shape == (n,)
            assert f["tracks"].shape == (n, 40)
            assert f["electrons"].shape == (n, 10)
            assert list(f["jets"].attrs["flavour_label"]) == ["bjets", "cjets", "ujets", "taujets"]
            assert int(f.attrs["unique_jets"]) == n
            counts = json.loads(f.attrs["jet_counts"])
            assert set(counts) == set(syn.FLAVOURS)
            assert sum(counts.values()) == n
            assert counts["bjets"] == int((f["jets"]["flavour_label"] == 0).sum())
            config = json.loads(f.attrs["config"])
            assert config["split"] == split
            assert config["num_jets"] == n
    assert (synthetic_dir / "norm_dict.yaml").is_file()
    assert (synthetic_dir / "class_dict.yaml").is_file()


def test_field_names_and_dtypes(synthetic_dir):
    with h5py.File(synthetic_dir / "train.h5", "r") as f:
        jets, tracks, electrons = f["jets"].dtype, f["tracks"].dtype, f["electrons"].dtype
    # the 19 GN2 track variables come first and in Salt's order, then the GN1 holes
    assert tracks.names[:19] == syn.GN2_TRACK_VARS
    assert tracks.names[19:21] == ("numberOfPixelHoles", "numberOfSCTHoles")
    for name in ("pt", "eta", "phi", "subjetIndex"):
        assert name in tracks.names
    assert tracks.names[-3:] == ("ftagTruthOriginLabel", "ftagTruthVertexIndex", "valid")
    assert electrons.names[:28] == syn.ELECTRON_VARS
    assert electrons.names[-2:] == ("ftagTruthOriginLabel", "valid")
    for name in (*syn.JET_FLOAT_VARS, *syn.JET_LABELS, "n_tracks"):
        assert name in jets.names
    for dt in (jets, tracks, electrons):
        for name in dt.names:
            kind = dt[name]
            if name == "valid":
                assert kind == np.dtype("?")
            elif name in (*syn.JET_LABELS, *syn.TRACK_LABELS, "n_tracks"):
                assert kind == np.dtype("i4"), name
            else:
                assert kind == np.dtype("f4"), name


def test_tracks_valid_first_sorted_and_padded(synthetic_dir):
    with h5py.File(synthetic_dir / "train.h5", "r") as f:
        tracks, jets = f["tracks"][:], f["jets"][:]
    valid = tracks["valid"]
    assert valid.any(axis=1).mean() > 0.95
    assert (np.diff(valid.astype(np.int8), axis=1) <= 0).all(), "valid tracks must come first"
    sd0 = np.where(valid, tracks["IP3D_signed_d0_significance"], -1e30)
    assert (np.diff(sd0, axis=1) <= 0).all(), "tracks must be sorted by descending sd0"
    assert (jets["n_tracks"] == valid.sum(axis=1)).all()
    for name in syn.TRACK_VARS:
        assert np.isfinite(tracks[name][valid]).all(), name
        assert np.isnan(tracks[name][~valid]).all(), name
    for name in syn.TRACK_LABELS:
        assert (tracks[name][~valid] == -1).all()
    assert (tracks["ftagTruthOriginLabel"][valid] >= 0).all()
    assert (tracks["ftagTruthOriginLabel"][valid] < 8).all()


def test_electrons_valid_first_sorted_by_pt(synthetic_dir):
    with h5py.File(synthetic_dir / "train.h5", "r") as f:
        ele = f["electrons"][:]
    valid = ele["valid"]
    assert 0.1 < valid.any(axis=1).mean() < 0.9
    assert (np.diff(valid.astype(np.int8), axis=1) <= 0).all()
    pt = np.where(valid, ele["pt"], -1e30)
    assert (np.diff(pt, axis=1) <= 0).all()
    for name in syn.ELECTRON_VARS:
        assert np.isfinite(ele[name][valid]).all(), name
    assert (ele["ftagTruthOriginLabel"][~valid] == -1).all()


def test_jet_fields_finite_except_light_truth(sample):
    jets = sample["jets"]
    light = jets["flavour_label"] == FLAVOUR_INDEX["ujets"]
    for name in syn.JET_FLOAT_VARS:
        if name.startswith("HadronConeExclTruthLabel"):
            assert np.isnan(jets[name][light]).all(), name
            assert np.isfinite(jets[name][~light]).all(), name
            assert (jets[name][~light] > 0).all(), name
        else:
            assert np.isfinite(jets[name]).all(), name
    ids = np.asarray(syn.HADRON_LABEL_IDS)[jets["flavour_label"]]
    assert (jets["HadronConeExclTruthLabelID"] == ids).all()
    assert (np.abs(jets["eta"]) < 2.5).all()
    assert jets["pt"].min() >= 20e3 and jets["pt"].max() <= 400e3  # MeV
    assert np.median(jets["pt"]) < 100e3  # falling spectrum
    np.testing.assert_allclose(jets["pt_btagJes"] / jets["pt"], 1.0, atol=0.3)


def test_mass_param_and_reference_scores(sample):
    jets = sample["jets"]
    is_b = jets["flavour_label"] == 0
    assert np.isin(jets["mass_param"][is_b], syn.MASS_PARAM_VALUES).all()
    assert (jets["mass_param"][~is_b] == -1).all()
    ref = np.stack([jets["ref_pb"], jets["ref_pc"], jets["ref_pu"]], axis=1)
    assert (ref > 0).all()
    np.testing.assert_allclose(ref.sum(axis=1), 1.0, rtol=1e-5)
    # the reference tagger is informative, but imperfect
    bl = is_b | (jets["flavour_label"] == 2)
    auc = _auc(np.log(jets["ref_pb"] / jets["ref_pu"])[bl], is_b[bl])
    assert 0.75 < auc < 0.98


def test_soft_muons(sample):
    jets = sample["jets"]
    has = jets["softMuon_pt"] > 0
    for name in syn.SOFT_MUON_VARS:
        assert np.isfinite(jets[name]).all()
        assert (jets[name][~has] == 0).all(), name
    frac = [has[jets["flavour_label"] == k].mean() for k in range(3)]
    assert frac[0] > frac[1] > frac[2] > 0  # b > c > light


# ----------------------------------------------------------------------- reproducibility


def test_determinism_with_seed(tmp_path):
    a = written(tmp_path / "a.h5", 300, seed=5, n_tracks=12, n_electrons=4)
    b = written(tmp_path / "b.h5", 300, seed=5, n_tracks=12, n_electrons=4)
    c = written(tmp_path / "c.h5", 300, seed=6, n_tracks=12, n_electrons=4)
    for name in a:
        assert _same(a[name], b[name]), name
    assert not _same(a["tracks"], c["tracks"])


def test_chunked_writing_is_identical(tmp_path):
    kwargs = {"seed": 3, "n_tracks": 15, "n_electrons": 4, "block_size": 64}
    small = syn.write_dataset(tmp_path / "small", 500, chunk_size=64, **kwargs)
    odd = syn.write_dataset(tmp_path / "odd", 500, chunk_size=150, **kwargs)
    large = syn.write_dataset(tmp_path / "large", 500, chunk_size=10_000, **kwargs)
    for split in ("train", "val", "test"):
        with (
            h5py.File(small[split]) as fs,
            h5py.File(odd[split]) as fo,
            h5py.File(large[split]) as fl,
        ):
            for name in ("jets", "tracks", "electrons"):
                assert _same(fs[name][:], fl[name][:]), (split, name)
                assert _same(fo[name][:], fl[name][:]), (split, name)
    for key in ("norm_dict", "class_dict"):
        assert small[key].read_text() == large[key].read_text()
    # and the dataset's train file equals the split written alone
    alone = written(tmp_path / "alone.h5", 400, split="train", **kwargs)
    with h5py.File(large["train"]) as f:
        assert _same(f["tracks"][:], alone["tracks"])


def test_split_streams_are_independent(tmp_path):
    both = syn.write_dataset(tmp_path / "a", {"train": 100, "test": 50}, splits=("train", "test"))
    alone = syn.write_dataset(tmp_path / "b", {"train": 100}, splits=("train",))
    with h5py.File(both["train"]) as fa, h5py.File(alone["train"]) as fb:
        assert _same(fa["jets"][:], fb["jets"][:])
    with h5py.File(both["train"]) as fa, h5py.File(both["test"]) as ft:
        assert not _same(fa["jets"][:50], ft["jets"][:])


def test_split_counts():
    assert syn.split_counts(1000) == {"train": 800, "val": 100, "test": 100}
    assert syn.split_counts(10, ("train", "val"), (0.5, 0.5)) == {"train": 5, "val": 5}
    assert syn.split_counts({"train": 7, "val": 2}, ("train", "val")) == {"train": 7, "val": 2}
    with pytest.raises(ValueError, match="every split needs"):
        syn.split_counts(3)
    with pytest.raises(ValueError, match="one entry per split"):
        syn.split_counts(100, ("train", "val"), (1.0,))
    with pytest.raises(ValueError, match="lacks the splits"):
        syn.split_counts({"train": 5}, ("train", "val"))


# ------------------------------------------------------------------------------ physics


def test_flavour_fractions(sample):
    frac = np.bincount(sample["jets"]["flavour_label"], minlength=4) / 4000
    np.testing.assert_allclose(frac, syn.FLAVOUR_FRACTIONS, atol=0.03)


def test_b_tracks_more_displaced_than_light(sample):
    jets, tracks = sample["jets"], sample["tracks"]
    valid = tracks["valid"]
    sd0 = np.abs(tracks["IP3D_signed_d0_significance"])

    def mean_abs(flav: int) -> float:
        return float(sd0[valid & (jets["flavour_label"] == flav)[:, None]].mean())

    assert mean_abs(0) > 2.0 * mean_abs(2)
    assert mean_abs(1) > 1.3 * mean_abs(2)
    # lifetime sign: HF tracks mostly positive, primary tracks symmetric
    origin = tracks["ftagTruthOriginLabel"]
    sgn = tracks["IP3D_signed_d0_significance"]
    hf = valid & np.isin(origin, (syn.FROM_B, syn.FROM_BC, syn.FROM_C))
    prim = valid & (origin == syn.PRIMARY)
    assert (sgn[hf] > 0).mean() > 0.75
    assert abs((sgn[prim] > 0).mean() - 0.5) < 0.05
    # pileup tracks are far away in z
    pu = valid & (origin == syn.PILEUP)
    assert np.abs(tracks["z0SinTheta"][pu]).mean() > 5 * np.abs(tracks["z0SinTheta"][prim]).mean()


def test_separability_is_realistic(sample):
    """Max track sd0 separates b from light clearly, but far from perfectly."""
    jets, tracks = sample["jets"], sample["tracks"]
    score = np.where(tracks["valid"], tracks["IP3D_signed_d0_significance"], -99.0).max(axis=1)
    bl = np.isin(jets["flavour_label"], (0, 2))
    auc = _auc(score[bl], (jets["flavour_label"] == 0)[bl])
    assert 0.8 < auc < 0.97


def test_vertex_indices_consistent_with_origins(sample):
    jets, tracks = sample["jets"], sample["tracks"]
    valid = tracks["valid"]
    origin, vertex = tracks["ftagTruthOriginLabel"], tracks["ftagTruthVertexIndex"]
    flav = np.broadcast_to(jets["flavour_label"][:, None], origin.shape)
    expected_vertex = {
        syn.PILEUP: -1,
        syn.FAKE: -1,
        syn.PRIMARY: 0,
        syn.FROM_B: 1,
        syn.FROM_BC: 2,
        syn.FROM_C: 1,
        syn.FROM_TAU: 1,
        syn.OTHER_SECONDARY: 3,
    }
    for o, v in expected_vertex.items():
        sel = valid & (origin == o)
        assert sel.any(), o
        assert (vertex[sel] == v).all(), o
    # heavy-flavour origins only in jets of that flavour
    assert (flav[valid & np.isin(origin, (syn.FROM_B, syn.FROM_BC))] == 0).all()
    assert (flav[valid & (origin == syn.FROM_C)] == 1).all()
    assert (flav[valid & (origin == syn.FROM_TAU)] == 3).all()
    # tracks sharing a non-negative vertex index within a jet share one origin
    for v in (1, 2, 3):
        sel = valid & (vertex == v)
        per_jet_origins = {(i, o) for i, o in zip(np.nonzero(sel)[0], origin[sel])}
        jets_with_v = set(np.nonzero(sel.any(axis=1))[0])
        assert len(per_jet_origins) == len(jets_with_v)


def test_ks_tracks_beyond_ibl_lack_ibl_hits(sample):
    tracks = sample["tracks"]
    sel = tracks["valid"] & (tracks["ftagTruthOriginLabel"] == syn.OTHER_SECONDARY)
    ibl = tracks["numberOfInnermostPixelLayerHits"][sel]
    prim = tracks["valid"] & (tracks["ftagTruthOriginLabel"] == syn.PRIMARY)
    assert (ibl == 0).mean() > (tracks["numberOfInnermostPixelLayerHits"][prim] == 0).mean() + 0.1


def test_fewer_track_slots_keep_the_most_displaced(tmp_path):
    few = written(tmp_path / "few.h5", 200, seed=2, n_tracks=3, n_electrons=2)
    many = written(tmp_path / "many.h5", 200, seed=2, n_tracks=60, n_electrons=2)
    assert few["tracks"].shape == (200, 3)
    assert few["electrons"].shape == (200, 2)
    assert _same(few["tracks"], many["tracks"][:, :3])


# ------------------------------------------------------------------- norm / class dicts


def test_norm_dict(synthetic_dir):
    norm = yaml.safe_load((synthetic_dir / "norm_dict.yaml").read_text())
    assert set(norm) == {"jets", "tracks", "electrons"}
    for ds, names in syn.NORM_VARS.items():
        assert set(norm[ds]) == set(names)
        for name, entry in norm[ds].items():
            assert set(entry) == {"mean", "std"}
            assert np.isfinite(entry["mean"]) and np.isfinite(entry["std"]), (ds, name)
            assert entry["std"] > 0, (ds, name)
    assert norm["tracks"]["subjetIndex"]["std"] == 1.0  # constant field
    # computed over valid tracks of the training file
    with h5py.File(synthetic_dir / "train.h5") as f:
        tracks = f["tracks"][:]
    d0 = tracks["d0"][tracks["valid"]].astype(np.float64)
    assert norm["tracks"]["d0"]["mean"] == pytest.approx(d0.mean(), rel=1e-5, abs=1e-9)
    assert norm["tracks"]["d0"]["std"] == pytest.approx(d0.std(), rel=1e-5)


def test_class_dict(synthetic_dir):
    cd = yaml.safe_load((synthetic_dir / "class_dict.yaml").read_text())
    assert len(cd["jets"]["flavour_label"]) == 4
    assert len(cd["jets"]["HadronConeExclTruthLabelID"]) == 4
    assert len(cd["tracks"]["ftagTruthOriginLabel"]) == 8
    assert len(cd["electrons"]["ftagTruthOriginLabel"]) == 8
    for ds in cd.values():
        for weights in ds.values():
            assert min(weights) == 1.0
            assert all(np.isfinite(w) and w >= 1.0 for w in weights)
    # light jets are the most common class -> weight 1; primary tracks likewise
    assert cd["jets"]["flavour_label"][2] == 1.0
    assert cd["tracks"]["ftagTruthOriginLabel"][syn.PRIMARY] == 1.0
    # HadronConeExclTruthLabelID weights are ordered by the sorted ids (0, 4, 5, 15)
    fl, hid = cd["jets"]["flavour_label"], cd["jets"]["HadronConeExclTruthLabelID"]
    assert hid == [fl[2], fl[1], fl[0], fl[3]]


# ---------------------------------------------------------------------------------- CLI


def test_cli(tmp_path, capsys):
    syn.main(["--out", str(tmp_path), "--n-jets", "120", "--seed", "1", "--n-tracks", "8"])
    line = capsys.readouterr().out.strip()
    assert "120 jets" in line and "train 96, val 12, test 12" in line
    with h5py.File(tmp_path / "train.h5") as f:
        assert f["tracks"].shape == (96, 8)
    syn.main(["--out", str(tmp_path / "b"), "--n-jets", "100", "--n-val", "30", "--n-test", "5"])
    assert "train 65, val 30, test 5" in capsys.readouterr().out


def test_tiny_data_fixture(tiny_data):
    paths = tiny_data(n_jets=50, n_tracks=6, n_electrons=3)
    with h5py.File(paths["val"]) as f:
        assert f["tracks"].shape == (5, 6)
        assert f["electrons"].shape == (5, 3)
    assert yaml.safe_load(paths["class_dict"].read_text())["tracks"]


def test_bad_sizes_raise_before_writing(tmp_path):
    with pytest.raises(ValueError, match="n_tracks and n_electrons must be >= 1"):
        syn.write_dataset(tmp_path, 10, n_tracks=0)
    assert not (tmp_path / "train.h5").exists()
    with pytest.raises(ValueError, match="n_jets must be >= 1"):
        syn.write_split(tmp_path / "x.h5", 0)


def test_more_slots_than_candidates_are_padding(tmp_path):
    data = written(tmp_path / "x.h5", 30, seed=1, n_tracks=100, n_electrons=12)
    tracks = data["tracks"]
    assert tracks.shape == (30, 100)
    assert not tracks["valid"][:, 60:].any()
    assert np.isnan(tracks["d0"][:, 60:]).all()
    assert (tracks["ftagTruthVertexIndex"][:, 60:] == -1).all()
