"""Hostile h5 inputs (hypothesis fuzz): every bad file gives a clear DataError/ValueError
naming what is wrong, or trains with finite losses; never a crash deep in torch or numpy.

Each example rewrites the tiny train file with one defect and runs the training build on
it (``hostile.Consumer``). Set ``SALTX_HOSTILE_LOG=file.jsonl`` to record every case
(docs/reliability.md's table is made from such a log).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import (
    JET_LABELS,
    JET_VARS,
    TRACK_LABELS,
    TRACK_VARS,
    Consumer,
    drop,
    outcome,
    read_base,
    retype,
    write_h5,
)
from relhelp import compose_train, write_tiny_data

FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure prints its case
)
# hydra wraps errors of the objects it builds (the message keeps the original ValueError)
CLEAR = ("DataError", "ValueError", "InstantiationException")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    data = write_tiny_data(
        tmp_path_factory.mktemp("hostiledata"), {"train": 64, "val": 32, "test": 32}
    )
    cfg = compose_train(data, tmp_path_factory.mktemp("hostilerun") / "run", "data.batch_size=16")
    return SimpleNamespace(data=data, base=read_base(data / "train.h5"), run=Consumer(cfg))


def _record(case: str, result: tuple[str, str]) -> None:
    log = os.environ.get("SALTX_HOSTILE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"case": case, "type": result[0], "message": result[1]}) + "\n")


def check(case: str, result: tuple[str, str], pattern: str | None, ok: bool = False) -> None:
    """``result`` is ok (when allowed) or a clear error whose message matches ``pattern``."""
    _record(case, result)
    kind, message = result
    if kind == "ok":
        assert ok, f"{case}: accepted silently, expected an error matching {pattern!r}"
        return
    assert kind in CLEAR, f"{case}: {kind}: {message}"
    assert pattern is not None and re.search(pattern, message, re.I | re.S), (
        f"{case}: message does not match {pattern!r}: {message}"
    )


def _probe(env: SimpleNamespace, arrays: dict, attrs=None, class_names="default", **data):
    """Run the training build on ``arrays`` written as the train file; class names other
    than the default go into the validation file too (the two must agree)."""
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {} if isinstance(class_names, str) else {"class_names": class_names}
        path = write_h5(Path(tmp) / "train.h5", arrays, attrs, **kwargs)
        if kwargs:
            val = write_h5(Path(tmp) / "val.h5", read_base(env.data / "val.h5"), **kwargs)
            return outcome(lambda: env.run(path, val_file=val, **data))
        return outcome(lambda: env.run(path, **data))


def test_valid_file_trains(env: SimpleNamespace) -> None:
    check("valid file", _probe(env, dict(env.base)), None, ok=True)


# -- dtypes ---------------------------------------------------------------------------------
NUMERIC = ["int8", "int16", "int32", "int64", "uint8", "uint16", "float16", "float64", "bool"]


@FUZZ
@given(field=st.sampled_from(JET_VARS + TRACK_VARS), dtype=st.sampled_from([*NUMERIC, "S8"]))
def test_fuzz_variable_dtypes(env: SimpleNamespace, field: str, dtype: str) -> None:
    ds = "jets" if field in JET_VARS else "tracks"
    arrays = dict(env.base)
    arrays[ds] = retype(arrays[ds], field, dtype)
    result = _probe(env, arrays)
    case = f"variable {ds}.{field} stored as {dtype}"
    if dtype == "S8":  # strings are not numbers
        check(case, result, rf"{field}.*(numeric|dtype|string)|(numeric|dtype).*{field}")
    else:  # any number converts to float32; float16 may overflow to inf
        check(case, result, rf"non-finite.*{field}", ok=True)


@FUZZ
@given(
    field=st.sampled_from(JET_LABELS + TRACK_LABELS),
    dtype=st.sampled_from(["int8", "int16", "int32", "uint8", "float32", "float64"]),
)
def test_fuzz_label_dtypes(env: SimpleNamespace, field: str, dtype: str) -> None:
    ds = "jets" if field in JET_LABELS else "tracks"
    arrays = dict(env.base)
    if dtype.startswith("uint"):  # negative padding labels cannot be unsigned
        arrays[ds] = arrays[ds].copy()
        arrays[ds][field] = np.maximum(arrays[ds][field], 0)
    arrays[ds] = retype(arrays[ds], field, dtype)
    check(f"label {ds}.{field} stored as {dtype}", _probe(env, arrays), field, ok=True)


def test_fractional_float_labels_are_refused(env: SimpleNamespace) -> None:
    arrays = dict(env.base)
    arrays["jets"] = retype(arrays["jets"], "flavour_label", "float32")
    arrays["jets"]["flavour_label"] += 0.5
    check(
        "label jets.flavour_label = 0.5, 1.5, ... (float32)",
        _probe(env, arrays),
        r"flavour_label.*(integer|integral|whole)",
    )


# -- missing fields, shapes, lengths ---------------------------------------------------------
@FUZZ
@given(field=st.sampled_from(JET_VARS + TRACK_VARS + JET_LABELS + TRACK_LABELS + ("valid",)))
def test_fuzz_missing_fields(env: SimpleNamespace, field: str) -> None:
    ds = "jets" if field in JET_VARS + JET_LABELS else "tracks"
    arrays = dict(env.base)
    arrays[ds] = drop(arrays[ds], field)
    check(f"field {ds}.{field} missing", _probe(env, arrays), rf"{field}.*not found|{field}")


@pytest.mark.parametrize("ds", ["jets", "tracks"])
def test_missing_dataset(env: SimpleNamespace, ds: str) -> None:
    arrays = {k: v for k, v in env.base.items() if k != ds}
    check(f"dataset {ds} missing", _probe(env, arrays), rf"no dataset '{ds}'")


@FUZZ
@given(rows=st.integers(1, 200))
def test_fuzz_length_mismatch(env: SimpleNamespace, rows: int) -> None:
    n = len(env.base["jets"])
    tracks = env.base["tracks"]
    reps = -(-rows // n)
    tracks = np.concatenate([tracks] * reps)[:rows]
    arrays = {"jets": env.base["jets"], "tracks": tracks}
    result = _probe(env, arrays)
    check(f"tracks {rows} rows vs jets {n}", result, rf"{rows} rows.*{n}", ok=rows == n)


def test_zero_rows(env: SimpleNamespace) -> None:
    arrays = {k: v[:0] for k, v in env.base.items()}
    check("jets and tracks with 0 rows", _probe(env, arrays), r"no jets|0 jets")


@pytest.mark.parametrize(
    "what",
    ["tracks 1D (N,)", "tracks 3D (N, T, 2)", "jets 2D (N, 2)", "tracks plain float array"],
)
def test_wrong_shapes(env: SimpleNamespace, what: str) -> None:
    jets, tracks = env.base["jets"], env.base["tracks"]
    arrays = {"jets": jets, "tracks": tracks}
    if what.startswith("tracks 1D"):
        arrays["tracks"] = tracks[:, 0]
        pattern = r"tracks.*(1D|2D|dimension|constituent|shape|valid)"
    elif what.startswith("tracks 3D"):
        arrays["tracks"] = np.stack([tracks, tracks], axis=-1)
        pattern = r"tracks.*(3D|2D|dimension|shape)"
    elif what.startswith("jets 2D"):
        arrays["jets"] = np.stack([jets, jets], axis=-1)
        pattern = r"jets.*(1D|2D|dimension|shape)"
    else:
        arrays["tracks"] = np.zeros(tracks.shape, dtype=np.float32)
        pattern = r"tracks.*not a structured array"
    check(what, _probe(env, arrays), pattern)


# -- values ---------------------------------------------------------------------------------
@FUZZ
@given(
    field=st.sampled_from(JET_VARS + TRACK_VARS),
    value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    row=st.integers(0, 63),
    slot=st.integers(0, 9),
    to_num=st.booleans(),
)
def test_fuzz_non_finite_values(
    env: SimpleNamespace, field: str, value: float, row: int, slot: int, to_num: bool
) -> None:
    ds = "jets" if field in JET_VARS else "tracks"
    arrays = {k: v.copy() for k, v in env.base.items()}
    arrays[ds] = retype(arrays[ds], field, "float32")
    if ds == "jets":
        arrays[ds][field][row] = value
        valid = True
    else:
        arrays[ds][field][row, slot] = value
        valid = bool(arrays[ds]["valid"][row, slot])
    result = _probe(env, arrays, non_finite_to_num=to_num)
    case = f"{value} in {ds}.{field} ({'valid' if valid else 'padded'} entry)"
    case += " with data.non_finite_to_num=true" if to_num else ""
    check(case, result, rf"non-finite.*{field}.*jet index {row}", ok=to_num or not valid)


@FUZZ
@given(num=st.one_of(st.integers(-5, 0), st.integers(11, 10**9)))
def test_fuzz_num_inputs_out_of_range(env: SimpleNamespace, num: int) -> None:
    result = _probe(env, dict(env.base), num_inputs={"tracks": num})
    check(f"data.num_inputs.tracks={num} (10 stored)", result, r"num_inputs\.tracks")


@FUZZ
@given(
    field=st.sampled_from(["flavour_label", "ftagTruthOriginLabel"]),
    value=st.one_of(st.integers(-(10**6), -3), st.integers(8, 10**6), st.sampled_from([4, 5, 7])),
    row=st.integers(0, 63),
)
def test_fuzz_out_of_range_labels(env: SimpleNamespace, field: str, value: int, row: int) -> None:
    """Label values outside [0, classes): a clear error before cross-entropy sees them."""
    arrays = {k: v.copy() for k, v in env.base.items()}
    if field == "flavour_label":
        arrays["jets"][field][row] = value
    else:
        slot = int(np.argmax(arrays["tracks"]["valid"][row]))  # a valid track of that jet
        arrays["tracks"]["valid"][row, slot] = True
        arrays["tracks"][field][row, slot] = value
    if field == "ftagTruthOriginLabel" and 4 <= value < 8:
        return  # 8 origin classes: 4..7 are valid
    result = _probe(env, arrays)
    check(f"label {field}={value}", result, rf"{field}.*{value}|{value}.*{field}")


@pytest.mark.parametrize(
    ("what", "attr"),
    [
        ("int", 5),
        ("float", 1.5),
        ("list of ints", [0, 1, 2, 3]),
        ("empty list", np.array([], dtype="S1")),
        ("3 names for 4 label values (and 4 class weights)", ["bjets", "cjets", "ujets"]),
        ("class names with ../", ["../../bjets", "cjets", "ujets", "taujets"]),
    ],
)
def test_flavour_label_attribute_types(env: SimpleNamespace, what: str, attr) -> None:
    result = _probe(env, dict(env.base), class_names=attr)
    case = f"jets.attrs['flavour_label'] = {what}"
    if what.startswith("class names with"):  # odd, but just names: accepted
        check(case, result, None, ok=True)
    elif what.startswith("3 names"):
        check(case, result, r"flavour_label|3 classes")
    else:
        check(case, result, r"flavour_label")


def test_missing_flavour_label_attribute_needs_class_names(env: SimpleNamespace) -> None:
    result = _probe(env, dict(env.base), class_names=None)
    check("no flavour_label attribute", result, r"class_names.*flavour_label|flavour_label")
