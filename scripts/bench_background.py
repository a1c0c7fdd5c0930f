"""A background load for the contention benchmark (``scripts/bench.py --contention``).

    python scripts/bench_background.py busy                 # one core: a plain busy loop
    python scripts/bench_background.py torch --threads 2    # a 2-thread torch job

``torch`` stands for another training job on the same machine: small matrix products
(rows 512, width 256, like a transformer layer's) with bias and ReLU, on ``--threads``
intra-op threads, with torch's default OpenMP settings (whatever ``OMP_WAIT_POLICY`` the
caller passes; ``bench.py`` removes saltx's). Runs until killed (or ``--seconds``);
every 5 s it prints the operations done, so its own throughput can be read from the log.
"""

from __future__ import annotations

import argparse
import time


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    n = 0
    while True:
        n += 1
        if n % 1_000_000 == 0 and time.monotonic() > end:
            return


def torch_job(threads: int, seconds: float, rows: int, width: int) -> None:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(rows, width)
    w = torch.randn(width, width) / width**0.5
    b = torch.randn(width)
    end = time.monotonic() + seconds
    t0, done = time.monotonic(), 0
    while time.monotonic() < end:
        for _ in range(50):
            x = torch.relu(torch.addmm(b, x, w))
            x = x / (x.norm() + 1.0) * rows**0.5
        done += 50
        if time.monotonic() - t0 > 5:
            print(f"{done / (time.monotonic() - t0):.0f} ops/s", flush=True)
            t0, done = time.monotonic(), 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["busy", "torch"])
    p.add_argument("--threads", type=int, default=2, help="torch: intra-op threads")
    p.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    p.add_argument("--rows", type=int, default=512, help="torch: rows of each product")
    p.add_argument("--width", type=int, default=256, help="torch: width of each product")
    args = p.parse_args(argv)
    if args.kind == "busy":
        busy(args.seconds)
    else:
        torch_job(args.threads, args.seconds, args.rows, args.width)


if __name__ == "__main__":
    main()
