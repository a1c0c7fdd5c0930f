"""saltx.data.pack: a packed file gives the very same batches as the original, and its
checks refuse what would not."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import s3_server
import yaml
from test_data_helpers import make_arrays

from saltx.data.dataset import JetDataset
from saltx.data.h5 import PACK_GROUP, LazyH5, PackedReader
from saltx.data.loader import build_dataloader
from saltx.data.pack import main, output_path, pack_file, select
from saltx.errors import DataError
from saltx.models.build import required_labels

VARIABLES = {
    "jets": ["pt_btagJes", "eta_btagJes"],
    "trk": ["d0", "numberOfPixelHits", "z0SinTheta"],
    "electrons": ["pt", "eta"],
    "GLOBAL": ["n_tracks"],
    "PARAMETERS": ["weight"],
    "EDGE": ["dR", "z", "isSelfLoop", "subjetIndex"],
}
INPUT_MAP = {"trk": "tracks"}
LABELS = {
    "jets": ["flavour_label", "HadronConeExclTruthLabelID"],
    "trk": ["ftagTruthOriginLabel", "ftagTruthVertexIndex"],
    "electrons": ["ftagTruthOriginLabel"],
}
PARAMETERS = {"weight": {"train": [0.5, 3.5], "test": 0.5}}

s3_endpoint = s3_server.s3_endpoint


def write(path: Path, arrays: dict[str, np.ndarray], chunks: int | None = 8) -> Path:
    """Structured datasets as UPP writes them: LZF chunks of ``chunks`` jets (None: plain)."""
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            kw = (
                {} if chunks is None else {"chunks": (chunks, *arr.shape[1:]), "compression": "lzf"}
            )
            f.create_dataset(name, data=arr, **kw)
        f["jets"].attrs["flavour_label"] = ["bjets", "cjets", "ujets", "taujets"]
        f.attrs["jet_counts"] = '{"bjets": 1}'
    return path


def packed(tmp_path: Path, src: Path, labels=LABELS) -> Path:
    dest = tmp_path / "packed" / src.name
    dest.parent.mkdir(exist_ok=True)
    pack_file(src, dest, select(VARIABLES, labels, INPUT_MAP))
    return dest


def dataset(path: Path, **kw) -> JetDataset:
    kw = {"labels": LABELS, "input_map": INPUT_MAP, "parameters": PARAMETERS, **kw}
    return JetDataset(path, VARIABLES, **kw)


def tensors(batch) -> dict[str, tuple]:
    """Every tensor of a batch as (dtype, shape, bytes): equal means bit-identical."""
    items = {f"in/{k}": v for k, v in batch.inputs.items()}
    items |= {f"mask/{k}": v for k, v in batch.masks.items()}
    items |= {f"label/{n}/{f}": v for n, fs in batch.labels.items() for f, v in fs.items()}
    return {k: (v.dtype, tuple(v.shape), v.numpy().tobytes()) for k, v in items.items()}


def assert_same_batches(a: JetDataset, b: JetDataset, epochs=(0, 1), **loader) -> int:
    """Both loaders give identical batches, in the same order; returns the batches seen."""
    seen = 0
    la = build_dataloader(a, seed=3, **loader)
    lb = build_dataloader(b, seed=3, **loader)
    for epoch in epochs:
        la.set_epoch(epoch)
        lb.set_epoch(epoch)
        for x, y in zip(la, lb, strict=True):
            tx, ty = tensors(x), tensors(y)
            assert tx.keys() == ty.keys()
            for key in tx:
                assert tx[key] == ty[key], key
            seen += 1
    return seen


@pytest.fixture
def arrays():
    return make_arrays(n_jets=61, n_tracks=7, n_electrons=3, seed=2)


@pytest.mark.parametrize("chunks", [8, None])
def test_packed_batches_are_bit_identical(tmp_path, arrays, chunks):
    src = write(tmp_path / "train.h5", arrays, chunks)
    dest = packed(tmp_path, src)
    with h5py.File(dest) as f:  # only the selected fields; valid tracks only; no filter
        assert set(f["tracks"].dtype.names) == {
            "d0", "numberOfPixelHits", "z0SinTheta", "pt", "eta", "phi", "subjetIndex",
            "ftagTruthOriginLabel", "ftagTruthVertexIndex", "valid",
        }  # fmt: skip
        assert f["tracks"].shape == (int(arrays["tracks"]["valid"].sum()),)
        assert f["tracks"].compression is None and f["tracks"].chunks is None
        assert "slots" not in f[PACK_GROUP]["tracks"]  # valid tracks come first here
        assert list(f["jets"].attrs["flavour_label"]) == ["bjets", "cjets", "ujets", "taujets"]
        assert f.attrs["jet_counts"] == '{"bjets": 1}'
    common = {"batch_size": 10, "shuffle": True, "drop_last": False}
    assert assert_same_batches(dataset(src), dataset(dest), **common) == 14
    # num_train, truncation, test-stage parameters, a shuffle buffer: still identical
    kw = {"num": 37, "num_inputs": {"trk": 4, "electrons": 2}, "stage": "test"}
    assert assert_same_batches(dataset(src, **kw), dataset(dest, **kw), **common) == 8
    mixed = {**common, "shuffle_buffer": 30}
    assert assert_same_batches(dataset(src), dataset(dest), **mixed) == 14
    # through a loader worker (shared-memory slots), as in training
    assert assert_same_batches(dataset(src), dataset(dest), epochs=(2,), num_workers=1, **common)


def test_slots_are_stored_when_valid_tracks_are_not_first(tmp_path, arrays):
    rng = np.random.default_rng(0)
    tracks = arrays["tracks"]
    for j in range(len(tracks)):  # scatter each jet's tracks over its slots
        tracks[j] = tracks[j][rng.permutation(tracks.shape[1])]
    src = write(tmp_path / "train.h5", arrays)
    dest = packed(tmp_path, src)
    with h5py.File(dest) as f:
        assert "slots" in f[PACK_GROUP]["tracks"]
    common = {"batch_size": 9, "shuffle": True, "drop_last": True}
    assert assert_same_batches(dataset(src), dataset(dest), **common) == 12
    kw = {"num_inputs": {"trk": 3}}
    assert assert_same_batches(dataset(src, **kw), dataset(dest, **kw), **common) == 12


def test_padding_that_varies(tmp_path, arrays):
    tracks = arrays["tracks"]
    pad = ~tracks["valid"]
    tracks["z0SinTheta"][pad] = np.arange(pad.sum())  # an input: its padding is never read
    src = write(tmp_path / "a.h5", arrays)
    dest = packed(tmp_path, src)
    assert assert_same_batches(dataset(src), dataset(dest), batch_size=16, shuffle=False,
                               drop_last=False) == 8  # fmt: skip
    # that field as a label would not come back exactly: refused when reading
    labels = {**LABELS, "trk": ["z0SinTheta"]}
    with pytest.raises(DataError, match=r"z0SinTheta.*padded slots did not all hold one value"):
        dataset(dest, labels=labels)
    # a label whose padding varies is refused when packing, naming it
    tracks["ftagTruthVertexIndex"][pad] = np.arange(pad.sum()) % 3 - 1
    src = write(tmp_path / "b.h5", arrays)
    with pytest.raises(DataError, match=r"label fields \['ftagTruthVertexIndex'\]"):
        packed(tmp_path, src)
    assert not list((tmp_path / "packed").glob("*b.h5*"))  # no partial file left behind


def test_damaged_packed_file_is_refused(tmp_path, arrays):
    dest = packed(tmp_path, write(tmp_path / "t.h5", arrays))
    with h5py.File(dest, "a") as f:
        offsets = f[PACK_GROUP]["tracks"]["offsets"]
        offsets[-1] = offsets[-1] + 5  # more records than stored
    with pytest.raises(DataError, match=r"packed dataset 'tracks'.*offsets run from 0 to"):
        dataset(dest)
    with h5py.File(dest, "a") as f:
        offsets = f[PACK_GROUP]["tracks"]["offsets"]
        offsets[-1] = offsets[-1] - 5
        offsets[3] = offsets[4] + 50  # a jet with more tracks than slots
    with pytest.raises(DataError, match=r"offsets are not increasing by 0 to 7"):
        dataset(dest)
    with h5py.File(dest, "a") as f:
        f.attrs["saltx_packed"] = 99
    with pytest.raises(DataError, match=r"layout version 99"):
        dataset(dest)


def test_errors_name_what_is_missing(tmp_path, arrays):
    src = write(tmp_path / "t.h5", arrays)
    dest = packed(tmp_path, src)
    with pytest.raises(DataError, match=r"\['d0_significance'\] not found.*saltx.data.pack"):
        JetDataset(dest, {"jets": ["pt_btagJes"], "tracks": ["d0_significance"]})
    with pytest.raises(DataError, match=r"fields \['nope'\] not found in dataset 'tracks'"):
        pack_file(src, tmp_path / "x.h5", select({"tracks": ["nope"]}))
    with pytest.raises(DataError, match=r"no structured dataset 'muons'"):
        pack_file(src, tmp_path / "x.h5", select({"muons": ["pt"]}))
    with pytest.raises(DataError, match="already packed"):
        pack_file(dest, tmp_path / "x.h5", select({"jets": ["pt_btagJes"]}))
    with pytest.raises(DataError, match="exists"):
        pack_file(src, dest, select({"jets": ["pt_btagJes"]}))


def test_reader_reuses_its_buffer_and_repads(tmp_path, arrays):
    """A long batch then a short one: slots written by the first read hold padding again."""
    src = write(tmp_path / "t.h5", arrays)
    dest = packed(tmp_path, src)
    reader = LazyH5(dest).reader("tracks")
    assert isinstance(reader, PackedReader)
    with h5py.File(src) as f:
        original = f["tracks"][:]
    assert "numberOfPixelHits" not in reader.exact_padding  # 1 + slot % 5 in padded slots
    for start, stop in ((0, 30), (30, 31), (5, 9), (0, 61)):
        got = reader.read_rows(start, stop)
        want = original[start:stop]
        valid = want["valid"]
        for name in got.dtype.names:
            where = slice(None) if name in reader.exact_padding else valid
            assert got[name][where].tobytes() == want[name][where].tobytes(), name
    assert not reader.read_rows(0, 3).flags.writeable


def test_command_line(tmp_path, arrays, capsys):
    src = write(tmp_path / "t.h5", arrays)
    variables = tmp_path / "vars.yaml"
    variables.write_text(yaml.safe_dump({"jets": ["pt_btagJes"], "tracks": ["d0"]}))
    out = tmp_path / "out"
    args = [str(src), str(out), "--variables", str(variables), "--labels", "jets:flavour_label"]
    assert main(args) == 0
    assert "packed 61 jets" in capsys.readouterr().out
    with h5py.File(output_path(str(src), str(out))) as f:
        assert f["jets"].dtype.names == ("pt_btagJes", "flavour_label")
    assert main(args) == 1  # exists
    assert "exists" in capsys.readouterr().err
    assert output_path("s3://b/x/train.h5", "dir") == Path("dir/train.h5")
    assert output_path("train.h5", "y.h5") == Path("y.h5")


def test_command_line_reads_a_train_config(tmp_path):
    """``+experiment=gn2``: the config's variables and every label its tasks need."""
    from saltx.data.synthetic import write_split

    src = tmp_path / "train.h5"
    write_split(src, 300, seed=1, n_tracks=12, n_electrons=2)
    dest = tmp_path / "p.h5"
    args = [str(src), str(dest), "+experiment=gn2", "data.num_inputs.tracks=8"]
    assert main(args, required_labels=required_labels) == 0
    with h5py.File(dest) as f:
        assert set(f["jets"].dtype.names) == {"pt_btagJes", "eta_btagJes", "flavour_label"}
        assert {"ftagTruthOriginLabel", "ftagTruthVertexIndex", "valid"} < set(
            f["tracks"].dtype.names
        )
        assert "electrons" not in f
    gn2 = yaml.safe_load(
        (Path(__file__).parents[2] / "src/saltx/conf/data/variables/gn2.yaml").read_text()
    )
    labels = {"jets": ["flavour_label"], "tracks": ["ftagTruthOriginLabel", "ftagTruthVertexIndex"]}
    a, b = (JetDataset(p, gn2, labels=labels) for p in (src, dest))
    assert assert_same_batches(a, b, epochs=(0,), batch_size=64, shuffle=True, drop_last=True) == 4


@pytest.mark.slow
def test_packed_file_reads_from_s3(tmp_path, arrays, s3_endpoint):
    src = write(tmp_path / "t.h5", arrays)
    dest = packed(tmp_path, src)
    url = s3_endpoint.upload(dest, "packed/t.h5")
    remote = dataset(url)
    assert remote.file.packed == {"tracks", "electrons"}
    common = {"batch_size": 10, "shuffle": True, "drop_last": True}
    assert assert_same_batches(dataset(src), remote, **common) == 12
