"""JetDataset: what is read, how it is shaped, and every error it raises."""

from __future__ import annotations

import os
import pickle

import fsspec
import h5py
import numpy as np
import numpy.lib.recfunctions as rfn
import pytest
import torch
from test_data_helpers import make_arrays, write_h5

from saltx.data.batch import Batch
from saltx.data.dataset import JetDataset, _field_runs, gather_fields, resolve_input_map
from saltx.data.sampler import BatchIndex
from saltx.errors import DataError

VARS = {"jets": ["pt_btagJes", "eta_btagJes"], "tracks": ["d0", "numberOfPixelHits", "pt"]}


@pytest.fixture
def arrays():
    return make_arrays(n_jets=20, n_tracks=6)


@pytest.fixture
def h5file(tmp_path, arrays):
    return write_h5(tmp_path / "data.h5", arrays)


def test_shapes_dtypes_values_and_masks(h5file, arrays):
    ds = JetDataset(h5file, VARS)
    assert len(ds) == 20
    batch = ds[slice(4, 10)]
    assert isinstance(batch, Batch)
    assert list(batch.inputs) == ["jets", "tracks"]
    jets, tracks = batch.inputs["jets"], batch.inputs["tracks"]
    assert jets.shape == (6, 2) and jets.dtype == torch.float32
    assert tracks.shape == (6, 6, 3) and tracks.dtype == torch.float32
    assert list(batch.masks) == ["tracks"]  # the global object has no mask
    mask = batch.masks["tracks"]
    valid = arrays["tracks"]["valid"][4:10]
    assert mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(~valid))
    np.testing.assert_array_equal(jets[:, 0].numpy(), arrays["jets"]["pt_btagJes"][4:10])
    for k, name in enumerate(VARS["tracks"]):
        want = np.where(valid, arrays["tracks"][name][4:10], 0).astype(np.float32)
        np.testing.assert_array_equal(tracks[..., k].numpy(), want)
    assert torch.isfinite(tracks).all()  # padded NaNs are zeroed
    assert tracks[mask].abs().sum() == 0


def test_index_forms_agree(h5file):
    ds = JetDataset(h5file, VARS)
    a, b, c = ds[2:7], ds[(2, 7)], ds[BatchIndex(2, 7, epoch=3)]
    for x in (b, c):
        assert torch.equal(a.inputs["tracks"], x.inputs["tracks"])
    with pytest.raises(IndexError):
        ds[0:10:2]
    with pytest.raises(IndexError):
        ds[(15, 25)]


def test_variable_order_follows_config(h5file, arrays):
    ds = JetDataset(h5file, {"tracks": ["pt", "d0"], "jets": ["eta_btagJes"]})
    batch = ds[0:5]
    assert list(batch.inputs) == ["tracks", "jets"]
    valid = arrays["tracks"]["valid"][:5]
    np.testing.assert_array_equal(
        batch.inputs["tracks"][..., 1].numpy(), np.where(valid, arrays["tracks"]["d0"][:5], 0)
    )


def test_gather_runs_match_naive_copy(arrays):
    buf = arrays["tracks"]
    names = ["d0", "z0SinTheta", "pt", "eta", "numberOfPixelHits", "subjetIndex", "valid"]
    runs = _field_runs(buf.dtype, names)
    assert len(runs) < len(names)  # adjacent same-dtype fields are merged
    out = gather_fields(buf, runs, len(names))
    naive = np.stack([buf[n].astype(np.float32) for n in names], axis=-1)
    np.testing.assert_array_equal(out, naive)


def test_labels_dtypes_and_truncation(h5file, arrays):
    labels = {"jets": ["flavour_label", "weight"], "tracks": ["ftagTruthOriginLabel"]}
    ds = JetDataset(h5file, VARS, labels=labels, num_inputs={"tracks": 4})
    batch = ds[0:8]
    assert batch.labels["jets"]["flavour_label"].dtype == torch.long
    assert batch.labels["jets"]["weight"].dtype == torch.float32  # sample weights: floats
    np.testing.assert_array_equal(batch.labels["jets"]["weight"], arrays["jets"]["weight"][:8])
    origin = batch.labels["tracks"]["ftagTruthOriginLabel"]
    assert origin.shape == (8, 4) and origin.dtype == torch.long
    np.testing.assert_array_equal(origin, arrays["tracks"]["ftagTruthOriginLabel"][:8, :4])
    assert batch.inputs["tracks"].shape == (8, 4, 3)
    assert batch.masks["tracks"].shape == (8, 4)


def test_num_inputs_errors(h5file):
    with pytest.raises(DataError, match=r"stored length 6"):
        JetDataset(h5file, VARS, num_inputs={"tracks": 7})
    with pytest.raises(DataError, match=r"unknown inputs \['electrons'\]"):
        JetDataset(h5file, VARS, num_inputs={"electrons": 2})


def test_input_map_renames_datasets(h5file, arrays):
    variables = {"jets": ["pt_btagJes"], "trk": ["d0"], "GLOBAL": ["mass", "n_tracks"]}
    with pytest.raises(DataError, match=r"no dataset 'trk'"):
        JetDataset(h5file, variables, non_finite_to_num=True)
    with pytest.raises(DataError, match=r"no dataset 'trk'"):  # unlisted inputs: own name
        JetDataset(h5file, variables, input_map={"jets": "jets"})
    ds = JetDataset(h5file, variables, input_map={"trk": "tracks"}, non_finite_to_num=True)
    batch = ds[0:3]
    assert batch.inputs["trk"].shape == (3, 6, 1)
    assert "trk" in batch.masks and "GLOBAL" not in batch.masks
    assert batch.inputs["GLOBAL"].shape == (3, 2)
    np.testing.assert_array_equal(batch.inputs["GLOBAL"][:, 1], arrays["jets"]["n_tracks"][:3])


def test_resolve_input_map_defaults():
    variables = {"jets": [], "GLOBAL": [], "PARAMETERS": [], "EDGE": []}
    assert resolve_input_map(variables, None, "events") == {
        "jets": "jets",
        "GLOBAL": "events",
        "PARAMETERS": "events",
        "EDGE": "jets",  # the first constituent input (here: jets, as events is global)
    }
    given = {"jets": "j", "EDGE": "flows", "GLOBAL": "j"}
    assert resolve_input_map(variables, given, "jets")["EDGE"] == "flows"
    assert resolve_input_map(variables, given, "jets")["GLOBAL"] == "j"
    # EDGE follows the first constituent input's dataset when the map does not name one
    variables = {"jets": [], "tracks": [], "electrons": [], "EDGE": []}
    renamed = resolve_input_map(variables, {"tracks": "tracks_loose"}, "jets")
    assert renamed == {
        "jets": "jets",
        "tracks": "tracks_loose",
        "electrons": "electrons",
        "EDGE": "tracks_loose",
    }


def test_other_global_object(tmp_path, arrays):
    path = write_h5(tmp_path / "ev.h5", {"events": arrays["jets"], "tracks": arrays["tracks"]})
    ds = JetDataset(path, {"events": ["pt_btagJes"], "tracks": ["d0"]}, global_object="events")
    assert ds[0:4].inputs["events"].shape == (4, 1)


PARAMS = {"mass": {"train": [10.0, 40.0, 55.0], "test": 40.0, "prob": [0.2, 0.3, 0.5]}}


def test_parameters_fit_draws_are_seeded(tmp_path):
    arrays = make_arrays(n_jets=300, n_tracks=3)
    path = write_h5(tmp_path / "p.h5", arrays)
    variables = {"jets": ["pt_btagJes"], "PARAMETERS": ["mass"]}
    ds = JetDataset(path, variables, parameters=PARAMS, seed=1)
    x = ds[BatchIndex(0, 300, 0)].inputs["PARAMETERS"][:, 0].numpy()
    assert "PARAMETERS" not in ds[0:5].masks
    assert set(np.unique(x)) <= {10.0, 40.0, 55.0}
    signal = np.arange(300) % 3 == 0  # these jets have mass 40 in the file and keep it
    assert (x[signal] == 40.0).all()
    drawn = x[~signal]
    assert len(set(np.unique(drawn))) == 3  # all train values appear among 200 draws
    again = ds[BatchIndex(0, 300, 0)].inputs["PARAMETERS"][:, 0].numpy()
    np.testing.assert_array_equal(x, again)  # reproducible (validation)
    other_epoch = ds[BatchIndex(0, 300, 1)].inputs["PARAMETERS"][:, 0].numpy()
    assert not np.array_equal(x, other_epoch)
    other_seed = JetDataset(path, variables, parameters=PARAMS, seed=2)
    assert not np.array_equal(x, other_seed[BatchIndex(0, 300, 0)].inputs["PARAMETERS"][:, 0])


def test_parameters_test_stage_and_checks(h5file):
    variables = {"jets": ["pt_btagJes"], "PARAMETERS": ["mass"]}
    ds = JetDataset(h5file, variables, parameters=PARAMS, stage="test")
    assert (ds[0:20].inputs["PARAMETERS"] == 40.0).all()
    with pytest.raises(DataError, match=r"must equal the keys of data.parameters"):
        JetDataset(h5file, variables, parameters={"other": PARAMS["mass"]})
    with pytest.raises(DataError, match=r"must equal the keys"):
        JetDataset(
            h5file,
            {"jets": ["pt_btagJes"], "PARAMETERS": ["mass", "weight"]},
            parameters={"weight": PARAMS["mass"], "mass": PARAMS["mass"]},
        )
    with pytest.raises(DataError, match=r"data\.parameters\.mass\.test is needed"):
        JetDataset(h5file, variables, parameters={"mass": {"train": [1.0]}}, stage="test")
    with pytest.raises(DataError, match=r"prob"):
        JetDataset(h5file, variables, parameters={"mass": {"train": [1, 2], "prob": [1.0]}})


def test_edge_raw_fields(h5file, arrays):
    variables = {**VARS, "EDGE": ["dR", "z", "isSelfLoop"]}
    ds = JetDataset(h5file, variables, num_inputs={"tracks": 5})
    batch = ds[0:10]
    edge = batch.inputs["EDGE"]
    assert edge.shape == (10, 5, 4) and edge.dtype == torch.float32
    assert "EDGE" not in batch.masks
    valid = arrays["tracks"]["valid"][:10, :5]
    for k, name in enumerate(["pt", "eta", "phi"]):
        want = np.where(valid, arrays["tracks"][name][:10, :5], 0)
        np.testing.assert_array_equal(edge[..., k].numpy(), want)
    assert (edge[..., 3] == 0).all()  # subjetIndex is not needed by dR, z, isSelfLoop
    full = JetDataset(h5file, {**VARS, "EDGE": ["subjetIndex"]})[0:10].inputs["EDGE"]
    want = np.where(arrays["tracks"]["valid"][:10], arrays["tracks"]["subjetIndex"][:10], 0)
    np.testing.assert_array_equal(full[..., 3].numpy(), want)


def test_edge_errors(tmp_path, arrays):
    path = write_h5(tmp_path / "e.h5", {"jets": arrays["jets"], "tracks": arrays["tracks"]})
    with pytest.raises(DataError, match=r"unknown edge features \['angle'\]"):
        JetDataset(path, {**VARS, "EDGE": ["angle"]})
    no_pt = {
        "jets": arrays["jets"],
        "tracks": rfn.drop_fields(arrays["tracks"], "pt", usemask=False),
    }
    path = write_h5(tmp_path / "nopt.h5", no_pt)
    variables = {"jets": ["pt_btagJes"], "tracks": ["d0"]}
    JetDataset(path, {**variables, "EDGE": ["dR", "isSelfLoop"]})  # pt not needed: fine
    with pytest.raises(DataError, match=r"\['pt'\] not found in dataset 'tracks'"):
        JetDataset(path, {**variables, "EDGE": ["kt"]})


def test_missing_file_dataset_variable(tmp_path, h5file):
    with pytest.raises(DataError, match=r"not found.*nope.h5"):
        JetDataset(tmp_path / "nope.h5", VARS)
    with pytest.raises(DataError, match=r"no dataset 'muons'.*available datasets"):
        JetDataset(h5file, {**VARS, "muons": ["pt"]})
    with pytest.raises(DataError, match=r"\['d00'\] not found.*available fields: \['d0'"):
        JetDataset(h5file, {"jets": ["pt_btagJes"], "tracks": ["d00"]})
    with pytest.raises(DataError, match=r"label fields.*\['nolabel'\]"):
        JetDataset(h5file, VARS, labels={"jets": ["nolabel"]})


def test_non_finite_inputs(tmp_path, arrays):
    arrays["tracks"]["z0SinTheta"][7, 0] = np.inf  # a valid slot
    arrays["jets"]["eta_btagJes"][3] = np.nan
    path = write_h5(tmp_path / "nan.h5", arrays)
    ds = JetDataset(path, {"tracks": ["d0", "z0SinTheta"]})
    with pytest.raises(DataError, match=r"'z0SinTheta' at jet index 7, constituent 0"):
        ds[0:10]
    assert torch.isfinite(ds[8:20].inputs["tracks"]).all()  # other batches are fine
    with pytest.raises(DataError, match=r"'eta_btagJes' at jet index 3"):
        JetDataset(path, {"jets": ["eta_btagJes"]})[0:10]
    ok = JetDataset(
        path, {"jets": ["eta_btagJes"], "tracks": ["z0SinTheta"]}, non_finite_to_num=True
    )
    batch = ok[0:10]
    assert batch.inputs["jets"][3, 0] == 0 and batch.inputs["tracks"][7, 0, 0] == 0


def test_num_jets_and_empty_file(tmp_path, h5file):
    assert len(JetDataset(h5file, VARS, num=5)) == 5
    with pytest.raises(DataError, match=r"requested 50 jets.*holds 20"):
        JetDataset(h5file, VARS, num=50)
    empty = write_h5(tmp_path / "empty.h5", make_arrays(n_jets=0))
    with pytest.raises(DataError, match=r"has no jets"):
        JetDataset(empty, VARS)


def test_truncated_and_zero_byte_files(tmp_path, h5file):
    data = h5file.read_bytes()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated.h5.*truncated/corrupt"):
        JetDataset(bad, VARS)
    zero = tmp_path / "zero.h5"
    zero.write_bytes(b"")
    with pytest.raises(DataError, match=r"zero.h5"):
        JetDataset(zero, VARS)


def test_lazy_handle_per_process_and_pickling(h5file):
    ds = JetDataset(h5file, VARS)
    assert ds.file._file is None  # closed after validation, opened on first read
    first = ds[0:4]
    assert ds.file._pid == os.getpid()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.file._file is None
    assert torch.equal(clone[0:4].inputs["tracks"], first.inputs["tracks"])
    ds.file._pid = -1  # as seen from a forked child: reopen instead of sharing
    assert torch.equal(ds[0:4].inputs["tracks"], first.inputs["tracks"])
    assert ds.file._pid == os.getpid()


def test_fsspec_and_file_objects(h5file):
    ref = JetDataset(h5file, VARS)[0:6].inputs["tracks"]
    lazy = JetDataset(fsspec.open(str(h5file), "rb"), VARS)
    assert torch.equal(lazy[0:6].inputs["tracks"], ref)
    with open(h5file, "rb") as fobj:
        assert torch.equal(JetDataset(fobj, VARS)[0:6].inputs["tracks"], ref)
    with h5py.File(h5file, "r") as f:  # the file stays readable while others hold it
        assert f["jets"].shape == (20,)


def test_electrons_and_stage_check(h5file, arrays):
    ds = JetDataset(h5file, {**VARS, "electrons": ["pt", "eta"]}, stage="test")
    batch = ds[0:8]
    assert batch.inputs["electrons"].shape == (8, 3, 2)
    assert torch.equal(
        batch.masks["electrons"], torch.from_numpy(~arrays["electrons"]["valid"][:8])
    )
    with pytest.raises(DataError, match=r"stage"):
        JetDataset(h5file, VARS, stage="train")


def test_raw_reads_and_converting_fallback_agree(tmp_path, arrays):
    from saltx.data.h5 import LazyH5

    fast = write_h5(tmp_path / "fast.h5", arrays)
    swapped = arrays["tracks"].astype(
        [(n, arrays["tracks"].dtype[n].newbyteorder(">")) for n in arrays["tracks"].dtype.names]
    )  # big-endian fields: HDF5 must convert, so the reader takes read_direct
    slow = write_h5(tmp_path / "slow.h5", {**arrays, "tracks": swapped})
    assert LazyH5(fast).reader("tracks").raw and LazyH5(fast).reader("jets").raw
    assert not LazyH5(slow).reader("tracks").raw
    labels = {"tracks": ["ftagTruthOriginLabel"]}
    a = JetDataset(fast, VARS, labels=labels)[3:17]
    b = JetDataset(slow, VARS, labels=labels)[3:17]
    assert torch.equal(a.inputs["tracks"], b.inputs["tracks"])
    assert torch.equal(a.masks["tracks"], b.masks["tracks"])
    for path in (fast, slow):  # reading only the first 3 constituents gives the same values
        cut = JetDataset(path, VARS, labels=labels, num_inputs={"tracks": 3})
        assert cut._read_cols == {"jets": None, "tracks": 3}
        c = cut[3:17]
        assert torch.equal(c.inputs["tracks"], a.inputs["tracks"][:, :3])
        assert torch.equal(
            c.labels["tracks"]["ftagTruthOriginLabel"],
            a.labels["tracks"]["ftagTruthOriginLabel"][:, :3],
        )
    assert torch.equal(
        a.labels["tracks"]["ftagTruthOriginLabel"], b.labels["tracks"]["ftagTruthOriginLabel"]
    )


def test_gather_with_valid_zeroes_padding(arrays):
    buf = arrays["tracks"]
    runs = _field_runs(buf.dtype, ["d0", "pt", "numberOfPixelHits"])
    out = gather_fields(buf, runs, 3, valid=buf["valid"])
    naive = np.stack([buf[n].astype(np.float32) for n in ["d0", "pt", "numberOfPixelHits"]], -1)
    naive[~buf["valid"]] = 0
    np.testing.assert_array_equal(out, naive)


def _tracks_file(path, filters, rows=103, slots=6, chunk=16, write=True):
    """A tracks-like dataset with random fields (NaN-free) chunked by ``chunk`` rows."""
    rng = np.random.default_rng(7)
    dtype = np.dtype([("a", "<f4"), ("n", "<i4"), ("b", "<f2"), ("valid", "?")])
    data = np.zeros((rows, slots), dtype)
    for name in ("a", "b"):
        data[name] = rng.normal(size=(rows, slots))
    data["n"] = rng.integers(-5, 5, size=(rows, slots))
    data["valid"] = rng.random((rows, slots)) < 0.4
    data["a"][:, 3:] = 0  # long zero runs, as in padded files (LZF back-references)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("tracks", (rows, slots), dtype, chunks=(chunk, slots), **filters)
        if write:
            ds[...] = data
        else:  # only the first two chunks are ever written: the rest are missing
            ds[: 2 * chunk] = data[: 2 * chunk]
            data[2 * chunk :] = np.zeros((), dtype)
    return data


@pytest.mark.parametrize(
    "filters",
    [{}, {"compression": "lzf"}, {"compression": "gzip"}, {"compression": "gzip", "shuffle": True}],
    ids=["plain", "lzf", "gzip", "shuffle-gzip"],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_chunk_decoding_reads_what_hdf5_reads(tmp_path, filters, threads):
    from saltx.data.h5 import RowReader

    data = _tracks_file(tmp_path / "t.h5", filters)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        reader = RowReader(f["tracks"], threads)
        reader.bytes_per_thread = 1  # thread even these small reads
        # shuffle + gzip is not decoded here: HDF5 reads it
        assert reader.chunked == ("shuffle" not in filters)
        spans = [(0, 103), (0, 16), (5, 6), (15, 17), (16, 48), (31, 97), (100, 103), (17, 18)]
        for start, stop in spans:
            for cols in (None, 2):
                buf = np.ones((stop - start, cols or 6), data.dtype)
                reader.read(buf, start)
                want = data[start:stop, : cols or 6]
                assert buf.tobytes() == want.tobytes(), (start, stop, cols)
                if reader.chunked:
                    view = reader.read_rows(start, stop, cols)
                    assert view.tobytes() == want.tobytes() and not view.flags.writeable
        assert (reader._pool is not None) == (threads > 1 and reader.chunked)  # threads ran


def test_missing_chunks_read_as_fill_values(tmp_path):
    from saltx.data.h5 import RowReader

    data = _tracks_file(tmp_path / "t.h5", {"compression": "lzf"}, write=False)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        reader = RowReader(f["tracks"], 2)
        reader.bytes_per_thread = 1
        assert reader.chunked
        assert reader.read_rows(20, 70).tobytes() == data[20:70].tobytes()


def test_chunked_lzf_files_give_the_same_batches(tmp_path, arrays):
    plain = write_h5(tmp_path / "a.h5", arrays)
    packed = tmp_path / "lzf.h5"
    with h5py.File(plain, "r") as src, h5py.File(packed, "w") as dst:
        for name, ds in src.items():
            dst.create_dataset(name, data=ds[...], chunks=(3, *ds.shape[1:]), compression="lzf")
        dst["jets"].attrs.update(src["jets"].attrs)
    labels = {"tracks": ["ftagTruthOriginLabel"], "jets": ["flavour_label"]}
    ref = JetDataset(plain, VARS, labels=labels)
    for threads in (1, 2):
        ds = JetDataset(packed, VARS, labels=labels, read_threads=threads)
        assert ds.file.reader("tracks").chunked
        for start, stop in ((0, 20), (3, 17), (19, 20), (4, 5)):
            a, b = ref[start:stop], ds[start:stop]
            pairs = [(a.inputs, b.inputs), (a.masks, b.masks)]
            pairs += [(a.labels[k], b.labels[k]) for k in labels]
            for x, y in pairs:
                assert x.keys() == y.keys()
                assert all(torch.equal(x[k], y[k]) and x[k].dtype == y[k].dtype for k in x)
    with pytest.raises(DataError, match="read_threads"):
        JetDataset(plain, VARS, read_threads=0)
