"""The object and tensor collectives on two gloo ranks: their results, and the exit-abort
guard: every finished collective's work, with its tensors, stays referenced from Python, so
gloo's worker thread never frees it (which takes the GIL, fatal at interpreter exit)."""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from saltx.engine import distributed as D

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _job(out_dir: str) -> None:
    """One rank: run each helper, record which of the tensors given to gloo are still alive."""
    info = D.setup_distributed("cpu")
    handed: list[weakref.ref] = []

    def recording(op):
        def call(*args, **kwargs):
            for a in args:
                for t in a if isinstance(a, list) else [a]:
                    if isinstance(t, torch.Tensor):
                        handed.append(weakref.ref(t))
            return op(*args, **kwargs)

        return call

    for name in ("all_reduce", "all_gather", "broadcast", "barrier"):
        setattr(dist, name, recording(getattr(dist, name)))
    try:
        result = {
            "broadcast": D.broadcast_object({"root": "x" * (3 + info.rank)}, info),
            "gathered": D.gather_objects({"rank": info.rank, "pad": "y" * 50 * info.rank}, info),
            "sum": D.all_reduce_sum(torch.full((3,), info.rank + 1.0), info).tolist(),
            "max": D.all_reduce_max(torch.tensor([float(info.rank)]), info).tolist(),
        }
        D.barrier(info)
        gc.collect()
        result["handed"] = len(handed)
        result["alive"] = sum(r() is not None for r in handed)
        result["kept"] = len(D._FINISHED_WORK)
        result["completed"] = all(w.is_completed() for w in D._FINISHED_WORK)
        Path(out_dir, f"{info.rank}.json").write_text(json.dumps(result))
    finally:
        D.cleanup()


@pytest.mark.slow
def test_collectives_on_two_ranks_keep_their_finished_work(tmp_path: Path) -> None:
    D.spawn(_job, 2, (str(tmp_path),))
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["broadcast"] == {"root": "xxx"}  # rank 0's object everywhere
        assert r["gathered"] == [{"rank": 0, "pad": ""}, {"rank": 1, "pad": "y" * 50}]
        assert r["sum"] == [3.0, 3.0, 3.0]
        assert r["max"] == [1.0]
        # 2 + 2 + 1 + 1 collectives and the barrier: each work is kept, and with it every
        # tensor a helper handed to gloo
        assert r["kept"] == 7 and r["completed"]
        assert r["handed"] >= 10
        assert r["alive"] == r["handed"]


def test_single_process_collectives_are_identities() -> None:
    info = D.DistInfo()
    assert D.broadcast_object({"a": 1}, info) == {"a": 1}
    assert D.gather_objects([1, 2], info) == [[1, 2]]
    t = torch.ones(2)
    assert D.all_reduce_sum(t, info) is t
