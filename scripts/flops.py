"""Model FLOPs per jet (padded and useful) and this machine's dense-matmul peak.

    python scripts/flops.py --experiment gn2 --file train.h5 [--batch-size 1000] \\
        [--threads 2] [--json out.json]
    python scripts/flops.py --peak-only [--threads 2] [--size 2048]

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a real batch
(matmuls and attention; elementwise ops are not counted), for the forward pass and for a
training step (forward + backward of the summed task losses):

* ``padded``: every constituent slot the model processes, valid or not (after any
  trimming of slots padded in all jets of the batch): the work the hardware does;
  counted on the whole batch.
* ``useful``: only valid tokens. FLOPs depend on shapes only, so one jet per valid count
  ``n`` is run with exactly ``n`` slots (valid slots first) and weighted by the number of
  jets with that ``n``: the attention and pair (vertexing) terms scale with ``n`` and
  ``n**2``, not the padded length. Jets without any valid constituent count with one slot.

The peak is the best of several ``torch.mm`` of two ``size x size`` float32 matrices
at ``--threads`` intra-op threads (``2 size**3`` FLOPs each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

aten = torch.ops.aten


# ------------------------------------------------------------------------------- counting
def _register_cpu_attention() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernels (same count as the GPU ones).

    ``F.scaled_dot_product_attention`` on CPU dispatches to
    ``_scaled_dot_product_flash_attention_for_cpu``, which torch's counter does not list;
    without this its FLOPs would silently count as zero.
    """
    from torch.utils import flop_counter as fc

    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:

        @fc.register_flop_formula(fwd)
        def _fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(q, k, v)

    if bwd is not None and bwd not in fc.flop_registry:

        @fc.register_flop_formula(bwd)
        def _bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out, q, k, v)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the torch operations run by ``fn()`` (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention()
    with FlopCounterMode(display=False) as mode:
        fn()
    return int(mode.get_total_flops())


def batch_flops(model: torch.nn.Module, batch, backward: bool) -> int:
    """FLOPs of one forward (and, with ``backward``, backward) pass over ``batch``.

    Parameters
    ----------
    model
        A saltx ``SaltModel`` (``forward(inputs, masks, labels) -> (preds, losses)``).
    batch
        A :class:`saltx.data.batch.Batch`; labels are needed when ``backward`` is true.
    """

    def run() -> None:
        if backward:
            _, losses = model(batch.inputs, batch.masks, batch.labels)
            torch.stack([v.float() for v in losses.values()]).sum().backward()
        else:
            with torch.no_grad():
                model(batch.inputs, batch.masks)

    flops = count_flops(run)
    model.zero_grad(set_to_none=True)
    return flops


def _constituent_of(batch) -> str:
    """The one masked (constituent) input; useful FLOPs need exactly one."""
    names = list(batch.masks)
    if len(names) != 1:
        raise ValueError(
            f"useful FLOPs need exactly one masked constituent input, got {names or 'none'}"
        )
    return names[0]


def select_jets(batch, rows: Tensor, n_slots: int):
    """The jets ``rows`` of ``batch`` with their constituents cut to ``n_slots`` slots.

    Valid slots are moved first (a stable sort on the mask), so cutting keeps every valid
    constituent as long as ``n_slots`` is at least the jets' valid count. Every tensor
    whose second dimension is the constituent slot count is cut the same way.

    Parameters
    ----------
    batch
        A ``Batch``: constituents ``(B, N, F)``, mask ``(B, N)`` (True = padded).
    rows
        ``(J,)`` long indices of the jets to keep.
    n_slots
        Slots to keep (``<= N``).
    """
    from saltx.data.batch import Batch

    name = _constituent_of(batch)
    mask = batch.masks[name][rows]
    n_all = mask.shape[1]
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_slots]

    def cut(t: Tensor) -> Tensor:
        t = t[rows]
        if t.dim() >= 2 and t.shape[1] == n_all:
            idx = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return torch.gather(t, 1, idx)
        return t

    return Batch(
        {k: cut(v) for k, v in batch.inputs.items()},
        {k: cut(v) for k, v in batch.masks.items()},
        {k: {f: cut(t) for f, t in d.items()} for k, d in batch.labels.items()},
    )


def useful_flops(model: torch.nn.Module, batch, backward: bool) -> tuple[int, dict[int, int]]:
    """FLOPs over valid constituents only, and the histogram ``{n_valid: jets}``.

    FLOPs depend on shapes only, so one jet per valid count ``n`` is run, with
    ``max(n, 1)`` slots, and its count is multiplied by the number of jets with that ``n``.
    """
    name = _constituent_of(batch)
    n_valid = (~batch.masks[name]).sum(dim=1)
    total, hist = 0, {}
    for n in sorted(int(x) for x in torch.unique(n_valid)):
        rows = torch.nonzero(n_valid == n).flatten()
        hist[n] = len(rows)
        total += len(rows) * batch_flops(model, select_jets(batch, rows[:1], max(n, 1)), backward)
    return total, hist


def padded_flops(model: torch.nn.Module, batch, backward: bool) -> float:
    """FLOPs per jet of the whole batch as the model runs it (all slots it keeps).

    Counted on the full batch: the model may trim slots that are padded in every jet of
    the batch, so the count depends on the batch, not only on the jet.
    """
    return batch_flops(model, batch, backward) / batch.num_jets


# ------------------------------------------------------------------------------- peak
def matmul_peak(size: int = 2048, threads: int = 2, reps: int = 5) -> dict[str, float]:
    """Best and median GFLOP/s of ``torch.mm`` on two ``size x size`` float32 matrices."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            rates.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(old)
    return {
        "size": size,
        "threads": threads,
        "gflops_best": max(rates),
        "gflops_median": statistics.median(rates),
    }


# ------------------------------------------------------------------------------- model
def model_flops(
    experiment: str, train_file: str, batch_size: int, overrides: list[str] | None = None
) -> dict:
    """Padded and useful FLOPs per jet (forward and training step) of ``experiment``.

    The model and loader come from ``saltx.assemble.build`` on the composed config, like
    ``scripts/bench_train.py``; the first training batch is counted.
    """
    from hydra import compose, initialize_config_dir

    import saltx
    from saltx.assemble import build
    from saltx.engine.distributed import DistInfo

    conf_dir = str(Path(saltx.__file__).resolve().parent / "conf")
    data = Path(train_file).parent
    cls = data / "class_dict.yaml"
    ov = [
        f"+experiment={experiment}",
        f"data.train_file={train_file}",
        f"data.val_file={train_file}",
        f"data.norm_dict={data / 'norm_dict.yaml'}",
        f"data.class_dict={cls}" if cls.exists() else "data.class_dict=null",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        *(overrides or []),
    ]
    with initialize_config_dir(conf_dir, version_base="1.3"):
        cfg = compose("train", overrides=ov)
    torch.manual_seed(int(cfg.seed))
    parts = build(cfg, DistInfo(device=torch.device("cpu")))
    model = parts.model.train()
    batch = next(iter(parts.train_loader))
    jets = batch.num_jets
    name = _constituent_of(batch)
    mask = batch.masks[name]
    out: dict = {
        "experiment": experiment,
        "batch_size": jets,
        "params": sum(p.numel() for p in model.parameters()),
        "constituent": name,
        "slots": int(mask.shape[1]),
        "mean_valid": float((~mask).sum(1).float().mean()),
        "padded_token_fraction": float(mask.float().mean()),
    }
    for key, backward in (("forward", False), ("train", True)):
        padded = padded_flops(model, batch, backward)
        useful, hist = useful_flops(model, batch, backward)
        out[f"{key}_padded_flops_per_jet"] = padded
        out[f"{key}_useful_flops_per_jet"] = useful / jets
    out["valid_histogram"] = hist
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experiment", default="gn2")
    p.add_argument("--file", help="training h5 file (norm_dict.yaml, class_dict.yaml beside it)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the peak")
    p.add_argument("--size", type=int, default=2048, help="matrix size of the peak")
    p.add_argument("--peak-only", action="store_true", help="only the matmul peak")
    p.add_argument("--json", help="write the results here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {"peak": matmul_peak(args.size, args.threads)}
    print(
        f"torch.mm {args.size}x{args.size} fp32, {args.threads} threads: "
        f"{result['peak']['gflops_best']:.1f} GFLOP/s (best), "
        f"{result['peak']['gflops_median']:.1f} (median)"
    )
    if not args.peak_only:
        if not args.file:
            p.error("--file is needed (or --peak-only)")
        m = model_flops(args.experiment, args.file, args.batch_size, args.overrides)
        result["model"] = m
        print(
            f"{args.experiment}: {m['params']:,} params, {m['mean_valid']:.1f} of {m['slots']} "
            f"slots valid; train step {m['train_padded_flops_per_jet'] / 1e6:.1f} MFLOP/jet "
            f"padded, {m['train_useful_flops_per_jet'] / 1e6:.1f} useful; forward "
            f"{m['forward_padded_flops_per_jet'] / 1e6:.1f} padded, "
            f"{m['forward_useful_flops_per_jet'] / 1e6:.1f} useful"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
