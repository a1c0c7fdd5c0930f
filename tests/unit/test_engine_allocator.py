"""The host allocator setting: freed large tensors are reused without new page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import json, resource, sys, torch
from saltx.engine.allocator import reuse_freed_memory
configured = reuse_freed_memory() if sys.argv[1] == "on" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # 64 MiB allocated, touched and freed: the heap settles
    torch.ones(16 * 2**20).sum()
before = faults()
for _ in range(5):
    torch.ones(16 * 2**20).sum()
print(json.dumps({"configured": configured, "faults": faults() - before}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    off, on = _run("off"), _run("on")
    assert on["configured"]
    pages = 5 * 64 * 2**20 // 4096
    assert off["faults"] > pages // 2  # each 64 MiB tensor is a fresh mapping
    assert on["faults"] < pages // 50  # the same heap block every time
