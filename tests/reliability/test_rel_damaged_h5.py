"""Truncated and corrupted h5 bytes: a clear DataError naming the file, never a crash.

All damaged variants run in one child process (``hostile.py``), so that a segfault or an
abort inside libhdf5 fails this test with the case that caused it instead of killing pytest.
Flipped bytes inside uncompressed numbers can give other, finite numbers: HDF5 stores no
checksums by default, so such a file trains (the only outcome besides a clear error).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relhelp import child_env, run_child, write_tiny_data

HOSTILE = str(Path(__file__).resolve().parent / "hostile.py")
CLEAR = ("DataError", "ValueError")


@pytest.mark.slow
def test_truncated_and_corrupted_files(tmp_path: Path) -> None:
    data = write_tiny_data(tmp_path / "data", {"train": 64, "val": 32, "test": 32})
    log = tmp_path / "damaged.jsonl"
    proc = run_child([sys.executable, HOSTILE, str(data), str(tmp_path), str(log)], child_env())
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    started = [x["start"] for x in lines if "start" in x]
    results = [x for x in lines if "case" in x]
    assert proc.returncode == 0, (
        f"the child died (exit {proc.returncode}) in case {started[-1] if started else '?'}:\n"
        f"{proc.stderr[-3000:]}"
    )
    assert len(results) == len(started) >= 20
    if os.environ.get("SALTX_HOSTILE_LOG"):
        with open(os.environ["SALTX_HOSTILE_LOG"], "a") as f:
            f.writelines(json.dumps({**r, "case": f"damaged: {r['case']}"}) + "\n" for r in results)
    bad = [r for r in results if r["type"] != "ok" and r["type"] not in CLEAR]
    assert bad == [], "\n".join(f"{r['case']}: {r['type']}: {r['message']}" for r in bad)
    for r in results:
        if r["case"].startswith("truncated"):
            assert r["type"] == "DataError", r
        if r["type"] != "ok":
            assert "train.h5" in r["message"] or "damaged_" in r["message"], r
