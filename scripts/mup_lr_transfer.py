"""Learning-rate sweep at two widths, under muP and SP: does the best learning rate transfer?

Writes a small synthetic dataset (or uses ``--data-dir``), then for each parametrisation
(muP: MuAdamW with base shapes from the ``mup:`` block; SP: default init, AdamW), width and
learning rate trains the model of ``experiment=gn2_mup`` for ``--steps`` constant-lr steps
and evaluates the loss on held-out batches. Prints the loss table and the best learning
rate per width; under muP the best learning rate should not move with the width.

    python scripts/mup_lr_transfer.py --widths 32 128 --steps 60
    python scripts/mup_lr_transfer.py --widths 64 256 -- model.encoder.num_layers=4

Extra arguments after ``--`` are Hydra overrides of the training config.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from saltx.data.batch import Batch
from saltx.data.synthetic import write_dataset
from saltx.mup.coord_check import load_batches, model_and_optimizer, with_fresh_shapes
from saltx.mup.shapes import compose_train


def train_and_evaluate(
    cfg: DictConfig,
    width: int,
    muP: bool,
    lr: float,
    train_batches: list[Batch],
    val_batches: list[Batch],
    seed: int,
) -> float:
    """Train for ``len(train_batches)`` steps; mean validation loss (nan if it diverged)."""
    model, optimizer = model_and_optimizer(cfg, width, muP, lr, seed)
    model.train()
    for batch in train_batches:
        _, losses = model(batch.inputs, batch.masks, batch.labels)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            return float("nan")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        vals = [float(sum(model(b.inputs, b.masks, b.labels)[1].values())) for b in val_batches]
    return float(np.mean(vals))


def sweep(args: argparse.Namespace, data_dir: Path) -> dict:
    overrides = [
        "experiment=gn2_mup",
        f"paths.data_dir={data_dir}",
        f"model.num_heads={args.heads}",
        f"model.out_dim={args.out_dim}",
        f"model.encoder.num_layers={args.layers}",
        f"mup.embed_dim.parameter_base={min(args.widths)}",
        f"mup.embed_dim.parameter_delta={2 * min(args.widths)}",
        f"+data.num_inputs.tracks={args.tracks}",
        *args.overrides,
    ]
    cfg = compose_train(overrides)
    batches = load_batches(cfg, args.steps + args.val_batches, args.batch_size)
    train_batches, val_batches = batches[: args.steps], batches[args.steps :]
    lrs = [10.0**e for e in np.arange(args.lr_min, args.lr_max + 1e-9, args.lr_step)]
    table: dict = {}
    with tempfile.TemporaryDirectory(prefix="saltx_lr_") as tmp:
        cfg = with_fresh_shapes(cfg, tmp)
        for param in ("muP", "SP"):
            for width in args.widths:
                for lr in lrs:
                    losses = [
                        train_and_evaluate(
                            cfg, width, param == "muP", lr, train_batches, val_batches, seed
                        )
                        for seed in range(args.seeds)
                    ]
                    loss = table[(param, width, lr)] = float(np.mean(losses))
                    print(f"  {param:3s} width {width:4d} lr {lr:.2e}: {loss:.4f}", flush=True)
    return {"lrs": lrs, "table": table}


def report(result: dict, widths: list[int]) -> str:
    """A markdown table: loss per (parametrisation, width) and learning rate, best marked."""
    lrs = result["lrs"]
    table = result["table"]
    head = "| param | width | " + " | ".join(f"{lr:.1e}" for lr in lrs) + " | best lr |"
    lines = [head, "|" + "---|" * (len(lrs) + 3)]
    for param in ("muP", "SP"):
        for width in widths:
            row = [table[(param, width, lr)] for lr in lrs]
            finite = [(v, lr) for v, lr in zip(row, lrs, strict=True) if math.isfinite(v)]
            best = min(finite)[1] if finite else float("nan")
            cells = [
                ("**" if lr == best else "")
                + (f"{v:.3f}" if math.isfinite(v) else "div")
                + ("**" if lr == best else "")
                for v, lr in zip(row, lrs, strict=True)
            ]
            lines.append(f"| {param} | {width} | " + " | ".join(cells) + f" | {best:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs=2, default=[32, 128])
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--out-dim", type=int, default=16)
    parser.add_argument("--tracks", type=int, default=10, help="track slots kept per jet")
    parser.add_argument("--lr-min", type=float, default=-3.5, help="log10 of the smallest lr")
    parser.add_argument("--lr-max", type=float, default=-1.0, help="log10 of the largest lr")
    parser.add_argument("--lr-step", type=float, default=0.5)
    parser.add_argument("--n-jets", type=int, default=6000, help="synthetic training jets")
    parser.add_argument("--data-dir", type=Path, default=None, help="existing train.h5 etc.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="saltx_lr_data_") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp)
            write_dataset(data_dir, {"train": args.n_jets, "val": 100, "test": 100}, seed=0)
        result = sweep(args, data_dir)
    print()
    print(report(result, sorted(args.widths)))
    print(
        f"\n({time.time() - start:.0f} s; {args.steps} steps, batch {args.batch_size}, "
        f"{args.seeds} seed(s), validation on {args.val_batches} held-out batches)"
    )


if __name__ == "__main__":
    main()
