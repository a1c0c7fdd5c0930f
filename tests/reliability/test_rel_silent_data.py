"""Data that is wrong without looking wrong (issue 14, part 4).

Each case used to train silently on garbage (zeros, wrapped labels, swapped classes) or to
escape as a raw traceback; each must now stop with a ``DataError``/``ValueError`` naming the
file, dataset and variable, or train with a warning where a physicist may mean it. The
checks are cheap: link and chunk metadata, and a few rows (see docs/data.md).
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import CLASS_NAMES, Consumer, outcome, read_base, retype, write_h5
from relhelp import compose_train, write_tiny_data
from test_rel_hostile_h5 import _record

CLEAR = ("DataError", "ValueError", "InstantiationException", "RunDirError")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    data = write_tiny_data(
        tmp_path_factory.mktemp("silentdata"), {"train": 64, "val": 32, "test": 32}
    )
    cfg = compose_train(data, tmp_path_factory.mktemp("silentrun") / "run", "data.batch_size=16")
    return SimpleNamespace(data=data, base=read_base(data / "train.h5"), run=Consumer(cfg))


def check(case: str, result: tuple[str, str], pattern: str | None) -> None:
    """A clear error whose message matches ``pattern``, or (pattern None) a finished run."""
    _record(f"silent data: {case}", result)
    kind, message = result
    if pattern is None:
        assert kind == "ok", f"{case}: {kind}: {message}"
        return
    assert kind != "ok", f"{case}: accepted silently, expected an error matching {pattern!r}"
    assert kind in CLEAR, f"{case}: {kind}: {message}"
    assert re.search(pattern, message, re.S), f"{case}: {pattern!r} not in: {message}"


def run_quietly(env: SimpleNamespace, *args, **kwargs) -> tuple[tuple[str, str], list[str]]:
    """``outcome`` of the training build, and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = outcome(lambda: env.run(*args, **kwargs))
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


# -- data stored elsewhere ------------------------------------------------------------------
def test_external_link_to_a_missing_file(env: SimpleNamespace, tmp_path: Path) -> None:
    path = write_h5(tmp_path / "train.h5", {"jets": env.base["jets"]})
    with h5py.File(path, "a") as f:
        f["tracks"] = h5py.ExternalLink("elsewhere.h5", "/tracks")
    result, _ = run_quietly(env, path)
    check(
        "tracks is an external link to a missing file",
        result,
        r"'tracks'.*external link.*elsewhere\.h5",
    )


def test_external_link_that_resolves_warns(env: SimpleNamespace, tmp_path: Path) -> None:
    write_h5(tmp_path / "other.h5", {"tracks": env.base["tracks"]}, class_names=None)
    path = write_h5(tmp_path / "train.h5", {"jets": env.base["jets"]})
    with h5py.File(path, "a") as f:
        f["tracks"] = h5py.ExternalLink("other.h5", "/tracks")
    result, caught = run_quietly(env, path)
    check("tracks is an external link to an existing file (warning)", result, None)
    assert any("external link" in w and "other.h5" in w for w in caught), caught


def _virtual_jets(path: Path, source: Path, jets: np.ndarray, tracks: np.ndarray) -> Path:
    layout = h5py.VirtualLayout(shape=jets.shape, dtype=jets.dtype)
    layout[:] = h5py.VirtualSource(str(source), "jets", shape=jets.shape)
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("jets", layout)
        f["jets"].attrs["flavour_label"] = CLASS_NAMES
        f.create_dataset("tracks", data=tracks)
    return path


def test_virtual_dataset_with_a_missing_source(env: SimpleNamespace, tmp_path: Path) -> None:
    src = write_h5(tmp_path / "part0.h5", {"jets": env.base["jets"]})
    path = _virtual_jets(tmp_path / "train.h5", src, env.base["jets"], env.base["tracks"])
    check("virtual jets whose source exists", run_quietly(env, path)[0], None)
    src.unlink()  # HDF5 now reads the fill value, zeros, for every jet
    result, _ = run_quietly(env, path)
    check(
        "virtual jets whose source file is missing",
        result,
        r"'jets'.*virtual dataset.*part0\.h5.*missing",
    )


# -- half-written files ---------------------------------------------------------------------
def test_chunked_datasets_half_written(env: SimpleNamespace, tmp_path: Path) -> None:
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        for name, arr in env.base.items():
            ds = f.create_dataset(
                name,
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=(8, *arr.shape[1:]),
                compression="lzf",
            )
            ds[:32] = arr[:32]  # the writer died here: chunks 4..7 were never written
        f["jets"].attrs["flavour_label"] = CLASS_NAMES
    result, _ = run_quietly(env, path)
    check(
        "chunked jets/tracks with half of the chunks written",
        result,
        r"'(jets|tracks)'.*4 of its 8 chunks written",
    )


def test_contiguous_jets_half_written(env: SimpleNamespace, tmp_path: Path) -> None:
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        jets = f.create_dataset("jets", shape=env.base["jets"].shape, dtype=env.base["jets"].dtype)
        jets[:40] = env.base["jets"][:40]  # rows 40.. stay zero: jets of class 0 with pt 0
        f.create_dataset("tracks", data=env.base["tracks"])
        f["jets"].attrs["flavour_label"] = CLASS_NAMES
    result, _ = run_quietly(env, path)
    check(
        "contiguous jets allocated, rows 40.. never written",
        result,
        r"'jets'.*row \d+ is all zeros",
    )


# -- labels and flags -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_unsigned_vertex_index(env: SimpleNamespace, tmp_path: Path, dtype: str) -> None:
    tracks = env.base["tracks"].copy()  # -1 (no vertex) on valid tracks wraps to 255 / 65535
    arrays = {"jets": env.base["jets"], "tracks": retype(tracks, "ftagTruthVertexIndex", dtype)}
    wrapped = np.iinfo(dtype).max
    assert (arrays["tracks"]["ftagTruthVertexIndex"][tracks["valid"]] == wrapped).any()
    result, _ = run_quietly(env, write_h5(tmp_path / "train.h5", arrays))
    assert "jet index" not in result[1], "not found when the file was opened"
    check(
        f"vertex index of tracks stored as {dtype} (-1 wrapped around)",
        result,
        rf"'ftagTruthVertexIndex'.*{dtype}.*{wrapped}.*-1",
    )


def test_unsigned_vertex_index_found_past_the_sample(
    env: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open-time sample sees only the first jets; every batch is checked as well."""
    import saltx.data.dataset as dataset_mod

    tracks = env.base["tracks"].copy()
    late = int(np.argwhere(tracks["valid"][40:].any(axis=1))[0][0]) + 40
    tracks["ftagTruthVertexIndex"] = np.where(tracks["valid"], 0, -1)
    tracks["ftagTruthVertexIndex"][late, np.argmax(tracks["valid"][late])] = -1
    arrays = {"jets": env.base["jets"], "tracks": retype(tracks, "ftagTruthVertexIndex", "uint8")}
    monkeypatch.setattr(dataset_mod, "SAMPLE_JETS", 4)
    result, _ = run_quietly(env, write_h5(tmp_path / "train.h5", arrays))
    check(
        "a wrapped uint8 vertex index past the sampled jets",
        result,
        rf"ftagTruthVertexIndex.*255.*jet index {late}",
    )


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float32"])
def test_valid_not_bool(env: SimpleNamespace, tmp_path: Path, dtype: str) -> None:
    arrays = {"jets": env.base["jets"], "tracks": retype(env.base["tracks"], "valid", dtype)}
    result, _ = run_quietly(env, write_h5(tmp_path / "train.h5", arrays))
    check(
        f"the valid flag of tracks stored as {dtype}",
        result,
        rf"'valid' of dataset 'tracks'.*{dtype}, not bool",
    )


def test_no_jet_has_a_valid_track(env: SimpleNamespace, tmp_path: Path) -> None:
    tracks = env.base["tracks"].copy()
    tracks["valid"] = False
    result, _ = run_quietly(
        env, write_h5(tmp_path / "train.h5", {"jets": env.base["jets"], "tracks": tracks})
    )
    check("no jet has a valid track", result, r"no jet in dataset 'tracks'.*valid constituent")


# -- class names ----------------------------------------------------------------------------
def test_train_and_val_class_names_differ(env: SimpleNamespace, tmp_path: Path) -> None:
    train = write_h5(tmp_path / "train.h5", dict(env.base))
    swapped = ["cjets", "bjets", "ujets", "taujets"]  # same set, other order: labels swap
    val = write_h5(tmp_path / "val.h5", read_base(env.data / "val.h5"), class_names=swapped)
    result, _ = run_quietly(env, train, val_file=val)
    check(
        "train and val class names in another order",
        result,
        r"class names of '.*val\.h5'.*differ.*train\.h5",
    )


@pytest.mark.parametrize(
    ("case", "names", "pattern"),
    [
        (
            "duplicate class names",
            ["bjets", "bjets", "ujets", "taujets"],
            r"\['bjets'\] more than once",
        ),
        ("a single class", ["bjets"], r"single class \['bjets'\]"),
    ],
)
def test_class_name_lists(
    env: SimpleNamespace, tmp_path: Path, case: str, names: list, pattern: str
) -> None:
    path = write_h5(tmp_path / "train.h5", dict(env.base), class_names=names)
    val = write_h5(tmp_path / "val.h5", read_base(env.data / "val.h5"), class_names=names)
    result, _ = run_quietly(env, path, val_file=val)
    check(case, result, rf"flavour_label.*{pattern}")


# -- YAML dicts -----------------------------------------------------------------------------
def _norm(env: SimpleNamespace, tmp_path: Path, edit) -> Path:
    norm = yaml.safe_load((env.data / "norm_dict.yaml").read_text())
    edit(norm)
    path = tmp_path / "norm_dict.yaml"
    path.write_text(yaml.safe_dump(norm) if norm is not None else "")
    return path


@pytest.mark.parametrize(
    ("case", "edit", "pattern"),
    [
        (
            "norm dict: negative std",
            lambda n: n["tracks"]["d0"].update(std=-1.5),
            r"'tracks\.d0\.std' = -1\.5 is negative",
        ),
        (
            "norm dict: zero std of a used variable",
            lambda n: n["tracks"]["d0"].update(std=0),
            r"\['tracks'\]\['d0'\] has std == 0",
        ),
        (
            "norm dict: non-numeric mean",
            lambda n: n["jets"]["pt_btagJes"].update(mean="abc"),
            r"'jets\.pt_btagJes\.mean' = 'abc' is not a number",
        ),
        (
            "norm dict: std is a list",
            lambda n: n["tracks"]["dphi"].update(std=[1, 2]),
            r"'tracks\.dphi\.std' = \[1, 2\] is not a number",
        ),
        (
            "norm dict: entry without std",
            lambda n: n["tracks"]["d0"].pop("std"),
            r"'tracks\.d0' must be \{mean: \.\.\., std: \.\.\.\}",
        ),
    ],
)
def test_norm_dict_values(
    env: SimpleNamespace, tmp_path: Path, case: str, edit, pattern: str
) -> None:
    result, _ = run_quietly(env, env.data / "train.h5", norm_dict=str(_norm(env, tmp_path, edit)))
    check(case, result, pattern)


def test_norm_dict_numeric_strings_are_numbers(env: SimpleNamespace, tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 as a string: it is still a number."""
    path = _norm(env, tmp_path, lambda n: n["tracks"]["d0"].update(std="1e-3"))
    check(
        "norm dict: std written as 1e-3 (a YAML string)",
        run_quietly(env, env.data / "train.h5", norm_dict=str(path))[0],
        None,
    )


def _class_dict(env: SimpleNamespace, tmp_path: Path, weights: list) -> Path:
    cdict = yaml.safe_load((env.data / "class_dict.yaml").read_text())
    cdict["jets"]["flavour_label"] = weights
    path = tmp_path / "class_dict.yaml"
    path.write_text(yaml.safe_dump(cdict))
    return path


@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        ([1.0, -2.0, 1.0, 1.0], r"'jets\.flavour_label' = \[1\.0, -2\.0, 1\.0, 1\.0\].*>= 0"),
        ([1.0, float("nan"), 1.0, 1.0], r"'jets\.flavour_label'.*finite"),
        ([1.0, "heavy", 1.0, 1.0], r"'jets\.flavour_label'.*numbers"),
        ("1.0", r"'jets\.flavour_label' = '1\.0'.*list"),
    ],
)
def test_class_dict_values(env: SimpleNamespace, tmp_path: Path, weights, pattern: str) -> None:
    result, _ = run_quietly(
        env, env.data / "train.h5", class_dict=str(_class_dict(env, tmp_path, weights))
    )
    check(f"class dict weights {weights}", result, rf"class dict '.*class_dict\.yaml': {pattern}")


def test_class_dict_zero_weight_warns(env: SimpleNamespace, tmp_path: Path) -> None:
    path = _class_dict(env, tmp_path, [1.0, 0.0, 2.0, 3.0])
    result, caught = run_quietly(env, env.data / "train.h5", class_dict=str(path))
    check("class dict with a zero weight (warning)", result, None)
    assert any("zero weight" in w for w in caught), caught


@pytest.mark.parametrize("what", ["norm_dict", "class_dict"])
def test_empty_yaml_dicts(env: SimpleNamespace, tmp_path: Path, what: str) -> None:
    path = tmp_path / f"{what}.yaml"
    path.write_text("")
    result, _ = run_quietly(env, env.data / "train.h5", **{what: str(path)})
    check(
        f"{what} is an empty file", result, rf"{what.replace('_', ' ')} '.*' must map.*empty file"
    )


# -- damaged compressed chunks --------------------------------------------------------------
@pytest.mark.parametrize("sample", [4096, 4])
def test_gzip_chunk_failing_its_checksum(
    env: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: int
) -> None:
    """saltx decodes chunks itself (read_direct_chunk): zlib's error must not escape raw.

    With the default sample the open-time check reads the damaged chunk (through HDF5);
    with a sample of 4 jets it is first met by saltx's own decoder, in a batch.
    """
    import saltx.data.dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "SAMPLE_JETS", sample)
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        for name, arr in env.base.items():
            f.create_dataset(name, data=arr, chunks=(16, *arr.shape[1:]), compression="gzip")
        f["jets"].attrs["flavour_label"] = CLASS_NAMES
        info = f["tracks"].id.get_chunk_info(2)  # the chunk of jets 32..47 (not the first)
    data = bytearray(path.read_bytes())
    end = info.byte_offset + info.size
    data[end - 4 : end] = bytes(b ^ 0xFF for b in data[end - 4 : end])  # the adler32 checksum
    path.write_bytes(bytes(data))
    result, _ = run_quietly(env, path)
    if sample > 4:
        pattern = r"jets \[0, 64\) of dataset 'tracks' in '.*train\.h5'.*damaged"
    else:
        pattern = r"jets \[32, 48\) of dataset 'tracks' in '.*train\.h5'.*does not decompress"
    where = "the open-time sample" if sample > 4 else "saltx's chunk decoder, in a batch"
    check(f"gzip chunk of tracks with a bad checksum, met by {where}", result, pattern)


# -- run directories ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "pattern"), [("", r"is empty"), ("- a\n- b\n", r"is a list, not a mapping")]
)
def test_empty_or_odd_run_config(tmp_path: Path, content: str, pattern: str) -> None:
    from saltx.run import load_run

    (tmp_path / "config.yaml").write_text(content)
    result = outcome(lambda: load_run(str(tmp_path)))
    check(f"run dir config.yaml {content!r}", result, rf"config\.yaml {pattern}")
