"""cProfile of salt-ml's dataset reading batches (run with the salt-ml venv; the peer kit on
``KIT``, as its ``env.sh`` sets): where a batch's time goes on the salt-ml side.

    source ../shared/peers/salt/env.sh
    python scripts/profile_salt_loader.py --config SALT_RUN/logs/GN2_*/config.yaml \\
        --batches 100 --json salt_profile.json

Builds the datamodule like the kit's ``bench_dataloader.py`` and reads shuffled contiguous
batches (``dataset[start:stop]``, what its sampler hands the loader) in this process. The
output has the same form as ``bench_dataloader.py --profile``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import numpy as np


def kit_build_dm():
    """``build_dm`` of the peer kit's ``bench_dataloader.py`` (``$KIT``, set by env.sh)."""
    import importlib.util
    import os

    path = Path(os.environ["KIT"]) / "bench_dataloader.py"
    spec = importlib.util.spec_from_file_location("salt_kit_bench_dataloader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_dm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()
    dm = kit_build_dm()(a.batch_size, a.config)
    ds = dm.train_dset
    starts = np.random.default_rng(1).permutation(len(ds) // a.batch_size) * a.batch_size
    n = min(a.batches, len(starts) - 1)
    ds[slice(int(starts[-1]), int(starts[-1]) + a.batch_size)]  # open the file, first read
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for s in starts[:n]:
        ds[slice(int(s), int(s) + a.batch_size)]
    prof.disable()
    wall = time.perf_counter() - t0
    rows = []
    for (path, line, name), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        where = f"{Path(path).name}:{name}" if line else name
        rows.append({"function": where, "ms_per_batch": 1e3 * tottime / n})
    rows.sort(key=lambda r: -r["ms_per_batch"])
    for r in rows:
        r["share"] = r["ms_per_batch"] / (1e3 * wall / n)
    out = {"batches": n, "ms_per_batch": 1e3 * wall / n, "functions": rows[: a.top]}
    print(f"salt-ml: {out['ms_per_batch']:.2f} ms per batch (cProfile), self time:")
    for r in out["functions"]:
        print(f"  {r['function']:<40} {r['ms_per_batch']:7.2f} ms  {100 * r['share']:5.1f}%")
    a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
