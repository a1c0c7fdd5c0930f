"""Training-step parity, saltx's ``gn2_salt013`` against salt-ml 0.13's GN2, measured.

    python scripts/check_step_parity.py          # ~1 min on 2 cores; JSON: ~/.cache/saltx/bench
    python scripts/check_step_parity.py --steps 10 --out /tmp/step_parity.json

``make bench-physics`` compares whole trainings, where seed noise hides small systematic
differences. This script removes the noise: both frameworks start from the *same weights*
and train on the *same batches*, and every term of a training step is compared.

1. salt-ml builds its GN2 from the bench's salt-ml config (the kit's ``gn2_cpu.yaml`` +
   ``learning_small.yaml``, through ``SaltCLI`` without training, in the peer venv as a
   subprocess: the two venvs differ). Its initial weights go through saltx's converter
   (``saltx.salt.checkpoint.convert_checkpoint``) into saltx's model of the bench's saltx
   variant (``+experiment=gn2_salt013`` with the bench's sizes and schedule).
2. Both run ``--steps`` optimizer steps on the same batch sequence (the same jet slices
   of the train file, read by each framework's own dataset): salt-ml with its
   ``ModelWrapper.shared_step``, its ``configure_optimizers`` (AdamW + OneCycleLR over
   ``--total-steps``, the bench's 400) and the gradient clipping of its trainer config;
   saltx with its loop's ``configure_torch``, ``train_step``, ``build_state`` (optimizer
   from ``conf/optimizer``, the schedule) and ``Precision.step``. Per step: each task's
   loss and the total, the gradient of every parameter, the learning rate and beta1 used,
   and the update (new - old parameters), as the largest relative difference
   ``max|saltx - salt| / max|salt|`` per parameter group. The runs:

   * ``float64``: real differences stand out of the rounding. saltx computes its losses
     in float32 by design (AMP-safe), so losses and gradients agree to ~3e-7 here; Adam
     magnifies that rounding in the updates of elements whose gradient is near its eps;
   * ``float64-untrimmed``: the same with saltx's padding skipping off (plain padded path);
   * ``float64-optimizer-replay``: salt-ml's gradients fed to saltx's optimizer and
     schedule: the updates alone, to float64 rounding;
   * ``float32`` (what training uses, with the float32 matmul precision each side trains
     with: ``salt fit`` sets "medium") and ``float32-highest`` (both at full float32); step
     0's float32 gradients of both are also compared with salt-ml's float64 ones.
3. The data side: steps per epoch (num_train not a multiple of the batch), the jets each
   framework's training loader covers in an epoch, the class weights, and the normalised
   track inputs with the jet features attached, as the first layer of the track init net
   sees them (a forward hook), for the same jets.
4. The initial weights, in distribution (``--init-seeds``, default 5): salt-ml's (one
   seed) against saltx's ``gn2_salt013`` built with that many seeds, per tensor the
   standard deviation and the largest |value|; flagged when either differs by more than
   10 % in a random tensor of at least 256 elements, or when a tensor is missing.

Prints the table and writes a JSON copy (``--out``, default
``~/.cache/saltx/bench/step_parity.json``). Exits 1 when a term differs beyond
``--tolerance`` in float64. Needs the salt-ml 0.13 venv of the kit (``$PEERS/salt-venv``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saltx" / "bench"
# salt-ml's runs: name -> (dtype, float32 matmul precision; None: as `salt fit` sets it)
SALT_RUNS = {
    "float64": ("float64", None),
    "float32": ("float32", None),
    "float32-highest": ("float32", "highest"),
}
# saltx's runs: (name, dtype, trim_padding, replay salt-ml's gradients, salt-ml run to
# compare with, float32 matmul precision; None: the experiment's trainer setting)
SALTX_RUNS = (
    ("float64", "float64", True, False, "float64", None),
    ("float64-untrimmed", "float64", False, False, "float64", None),
    ("float64-optimizer-replay", "float64", True, True, "float64", None),
    ("float32", "float32", True, False, "float32", None),
    ("float32-highest", "float32", True, False, "float32-highest", "highest"),
)


# ============================================================== salt-ml side (peer venv)
def salt_side(args: argparse.Namespace) -> None:
    """Build salt-ml's GN2, run the steps, save everything to ``args.work``/salt_*.

    Runs in the salt-ml venv: imports salt, torch, numpy only (no saltx).
    """
    import pathlib
    import types

    import salt
    import torch
    from salt.data.datamodules import SaltDataModule
    from salt.modelwrapper import ModelWrapper
    from salt.utils.cli import SaltCLI

    class CLI(SaltCLI):
        # SaltCLI reads config.ckpt_path, which only the fit/test subcommands declare
        def add_arguments_to_parser(self, parser: Any) -> None:
            super().add_arguments_to_parser(parser)
            parser.add_argument("--ckpt_path", default=None)

    work, data, kit = Path(args.work), Path(args.data), Path(args.kit)
    base = pathlib.Path(salt.__file__).parent / "configs" / "base.yaml"
    cli_args = [
        "--config",
        str(kit / "configs" / "gn2_cpu.yaml"),
        "--config",
        str(kit / "configs" / "learning_small.yaml"),
        "--force",
        f"--data.train_file={data / 'train.h5'}",
        f"--data.val_file={data / 'val.h5'}",
        f"--data.norm_dict={data / 'norm_dict.yaml'}",
        f"--data.class_dict={data / 'class_dict.yaml'}",
        f"--data.batch_size={args.batch_size}",
        f"--data.num_train={args.num_train}",
        "--data.num_val=-1",
        "--data.num_workers=0",
        f"--seed_everything={args.seed}",
        f"--trainer.default_root_dir={work / 'salt_logs'}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
    cli = CLI(
        model_class=ModelWrapper,
        datamodule_class=SaltDataModule,
        save_config_callback=None,
        run=False,
        args=cli_args,
        parser_kwargs={"default_env": True, "default_config_files": [str(base)]},
    )
    config = cli.config
    # the resolved config, as `salt fit` writes it into its run directory
    (work / "salt_config.yaml").write_text(cli.parser.dump(config, skip_none=False))
    wrapper = cli.model
    init_state = {k: v.detach().clone() for k, v in wrapper.state_dict().items()}
    torch.save({"state_dict": init_state, "epoch": 0, "global_step": 0}, work / "salt_init.ckpt")
    trainer_cfg = config.trainer
    clip_val = trainer_cfg.get("gradient_clip_val")
    clip_alg = trainer_cfg.get("gradient_clip_algorithm") or "norm"

    dm = cli.datamodule
    dm.trainer = types.SimpleNamespace(is_global_zero=False, fast_dev_run=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = []
    for _ in range(2):  # the jet slices of two epochs, in salt-ml's order
        epochs.append([[int(s.start), int(s.stop)] for s in loader.batch_sampler or loader.sampler])
    out: dict[str, Any] = {
        "params": sum(p.numel() for p in wrapper.parameters() if p.requires_grad),
        "train_batches_per_epoch": len(loader),
        "train_len": len(dm.train_dset),
        "epoch_slices": epochs,
        "gradient_clip_val": clip_val,
        "gradient_clip_algorithm": clip_alg,
        "accumulate_grad_batches": trainer_cfg.get("accumulate_grad_batches", 1),
        "precision": str(trainer_cfg.get("precision")),
        "class_weights": {
            t.name: t.loss.weight.tolist()
            for t in wrapper.model.tasks
            if getattr(t.loss, "weight", None) is not None
        },
        "runs": {},
    }
    slices = [tuple(s) for s in json.loads(args.slices)]
    fit_matmul = torch.get_float32_matmul_precision()  # what SaltCLI set for `salt fit`
    out["float32_matmul_precision"] = fit_matmul
    for run_name, (dtype_name, matmul) in SALT_RUNS.items():
        dtype = getattr(torch, dtype_name)
        torch.set_float32_matmul_precision(matmul or fit_matmul)
        wrapper.load_state_dict(init_state)
        wrapper.to(dtype)
        wrapper.train()
        # configure_optimizers reads the stepping batches from the trainer: the bench's count
        wrapper._trainer = types.SimpleNamespace(estimated_stepping_batches=args.total_steps)
        optimizers, schedulers = wrapper.configure_optimizers()
        optimizer, scheduler = optimizers[0], schedulers[0]["scheduler"]
        group = optimizer.param_groups[0]
        run: dict[str, Any] = {
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "optimizer": {
                "class": type(optimizer).__name__,
                "groups": len(optimizer.param_groups),
                **{k: _plain(v) for k, v in group.items() if k != "params"},
            },
            "steps": [],
        }
        first = next(
            m for m in wrapper.model.init_nets[0].modules() if type(m).__name__ == "Linear"
        )
        for step, (start, stop) in enumerate(slices):
            inputs, masks, labels = dm.train_dset[slice(start, stop)]
            inputs = {k: v.to(dtype) for k, v in inputs.items()}
            seen: dict[str, torch.Tensor] = {}
            hook = capture_input(first, seen)
            optimizer.zero_grad(set_to_none=True)
            lr, beta1 = float(group["lr"]), float(group["betas"][0])
            _, _, _, losses = wrapper.shared_step((inputs, masks, labels))
            hook.remove()
            losses["loss"].backward()
            grads = {n: p.grad.detach().clone() for n, p in wrapper.named_parameters()}
            before = {n: p.detach().clone() for n, p in wrapper.named_parameters()}
            norm = None
            if clip_val:  # Lightning's clip_gradients (algorithm "norm" or "value")
                params = list(wrapper.parameters())
                if clip_alg == "value":
                    torch.nn.utils.clip_grad_value_(params, clip_val)
                else:
                    norm = float(torch.nn.utils.clip_grad_norm_(params, clip_val))
            optimizer.step()
            scheduler.step()
            record = {
                "losses": {k: float(v) for k, v in losses.items()},
                "lr": lr,
                "beta1": beta1,
                "grads": grads,
                "updates": {n: p.detach() - before[n] for n, p in wrapper.named_parameters()},
                "clip_norm": norm,
            }
            if step == 0:
                record["init_input"] = seen["x"].detach().clone()
                record["pad_mask"] = masks["tracks"].clone()
            run["steps"].append(record)
        run["final"] = {n: p.detach().clone() for n, p in wrapper.named_parameters()}
        out["runs"][run_name] = run
        wrapper.to(torch.float32)
    torch.save(out, work / "salt_steps.pt")


def capture_input(module: Any, store: dict) -> Any:
    """Forward hook keeping the first input of ``module`` in ``store["x"]``; returns it."""

    def hook(_module: Any, args: tuple, _output: Any) -> None:
        store.setdefault("x", args[0].detach().clone())

    return module.register_forward_hook(hook)


def _plain(value: Any) -> Any:
    """JSON-able copy of an optimizer hyperparameter."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


# ====================================================================== saltx side
def saltx_compose(args: argparse.Namespace, data: Path, out: Path) -> Any:
    """The bench's saltx-salt013 config (bench_physics's overrides) on the tiny files."""
    sys.path.insert(0, str(SCRIPTS))
    from bench_physics import VARIANTS

    from saltx.salt.config import compose

    variant = VARIANTS["saltx-salt013"]
    return compose(
        [
            f"+experiment={variant.experiment}",
            *variant.overrides,
            f"paths.data_dir={data}",
            f"paths.output_dir={out}",
            f"seed={args.seed}",
            f"data.batch_size={args.batch_size}",
            f"data.num_train={args.num_train}",
            "data.num_val=-1",
            "trainer.max_epochs=2",
            f"lrs.total_steps={args.total_steps}",
            "logger=none",
        ]
    )


def group_of(name: str) -> str:
    """Parameter group of a saltx parameter name (for the per-group table)."""
    parts = name.split(".")
    if parts[0] == "encoder" and parts[1] == "layers":
        return f"encoder.layers.{parts[2]}.{parts[3]}"
    if parts[0] in ("tasks", "init_nets"):
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if parts[0] == "encoder" else parts[0]


def rel_diff(ours: Any, ref: Any) -> float:
    """``max|ours - ref| / max|ref|`` over a tensor (0 when both are zero)."""

    a, b = ours.detach().double(), ref.detach().double()
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


def per_group(ours: dict, ref: dict) -> dict[str, float]:
    """Relative difference per parameter group: ``max|ours - ref| / max|ref|`` over the
    group's tensors (keys: saltx parameter names).

    Measured against the group's scale, not each tensor's: some gradients are zero in
    exact arithmetic (the attention key bias and the pooling gate's bias, under the
    softmax's shift invariance) and hold only rounding noise, ~1e-20, on both sides.
    """
    import torch

    missing = sorted(set(ref) ^ set(ours))
    if missing:
        raise ValueError(f"parameters only on one side: {missing[:8]}")
    diff: dict[str, float] = {}
    scale: dict[str, float] = {}
    for name in ref:
        g = group_of(name)
        a, b = ours[name].detach().to(torch.float64), ref[name].detach().to(torch.float64)
        diff[g] = max(diff.get(g, 0.0), float((a - b).abs().max()))
        scale[g] = max(scale.get(g, 0.0), float(b.abs().max()))
    return {g: diff[g] / scale[g] if scale[g] > 0 else diff[g] for g in diff}


def saltx_side(args: argparse.Namespace, data: Path, work: Path, salt: dict) -> dict[str, Any]:
    """Run saltx on the converted weights and the same batches; returns the comparison."""
    import numpy as np
    import torch

    import saltx.config
    from saltx.assemble import build
    from saltx.engine.distributed import DistInfo
    from saltx.engine.loop import build_state, configure_torch, train_step
    from saltx.run import fit_weights
    from saltx.salt.checkpoint import convert_checkpoint, map_weights
    from saltx.salt.config import convert_config, load_salt_config

    run_dir = work / "converted"
    convert_checkpoint(work / "salt_init.ckpt", work / "salt_config.yaml", run_dir, force=True)
    weights = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    conv = convert_config(load_salt_config(work / "salt_config.yaml"))
    init_nets, task_names = list(conv.values["_init_nets"]), list(conv.task_names.values())

    def to_saltx(tensors: dict) -> dict:
        return map_weights(tensors, init_nets, task_names)

    cfg = saltx_compose(args, data, work / "saltx_run")
    conf = saltx.config.validate(cfg)
    info = DistInfo()
    parts = build(cfg, info)  # the training loop's own build: model and loaders
    model = parts.model
    weights = fit_weights(model, weights, "converted salt-ml weights vs gn2_salt013")
    init_state = {k: v.clone() for k, v in weights.items()}
    loader = parts.train_loader
    dataset = loader.jet_dataset
    sampler = loader.sampler
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append([[b.start, b.stop] for b in sampler])
    sampler.set_epoch(0)

    def covered(epoch_slices: list) -> list[int]:
        jets = np.zeros(len(dataset), dtype=np.int64)
        for start, stop in epoch_slices:
            jets[start:stop] += 1
        return jets.tolist()

    data_side = {
        "steps_per_epoch": {"salt": salt["train_batches_per_epoch"], "saltx": len(loader)},
        "train_jets": {"salt": salt["train_len"], "saltx": len(dataset)},
        "same_jets_each_epoch": all(
            covered(a) == covered(b) for a, b in zip(salt["epoch_slices"], epochs, strict=True)
        ),
        "jets_per_epoch": {
            "salt": [sum(b - a for a, b in e) for e in salt["epoch_slices"]],
            "saltx": [sum(b - a for a, b in e) for e in epochs],
        },
        "same_batch_order": salt["epoch_slices"] == epochs,
        "class_weights": {},
    }
    salt_to_saltx = conv.task_names
    for salt_name, weights_ in salt["class_weights"].items():
        ours = model.tasks[salt_to_saltx[salt_name]].class_weights
        data_side["class_weights"][salt_to_saltx[salt_name]] = {
            "salt": weights_,
            "saltx": ours.tolist(),
            "max_abs_diff": float(np.max(np.abs(np.asarray(weights_) - ours.numpy()))),
        }

    slices = [tuple(s) for s in json.loads(args.slices)]
    result: dict[str, Any] = {"data": data_side, "runs": {}}
    first = next(m for m in model.init_nets["tracks"].modules() if isinstance(m, torch.nn.Linear))
    reference = to_saltx(salt["runs"]["float64"]["steps"][0]["grads"])
    configure_torch(cfg.trainer, info)  # the loop's: threads, float32 matmul precision
    own_matmul = torch.get_float32_matmul_precision()
    for run_name, dtype_name, trim, replay, salt_run, matmul in SALTX_RUNS:
        dtype = getattr(torch, dtype_name)
        srun = salt["runs"][salt_run]
        torch.set_float32_matmul_precision(matmul or own_matmul)
        model.trim_padding = trim
        model.load_state_dict(init_state)
        model.to(dtype)
        for task in model.tasks.values():  # saltx's losses are float32 (AMP-safe) by design
            if getattr(task, "class_weights", None) is not None:
                task.class_weights = task.class_weights.float()
        model.train()
        state, total = build_state(conf, model, len(loader), {}, info)
        group = state.optimizer.param_groups[0]
        sch = state.scheduler
        mine = {
            "class": type(state.optimizer).__name__,
            "groups": len(state.optimizer.param_groups),
            # OneCycleLR keeps its settings in the param group; saltx's schedule in itself
            "initial_lr": sch.initial,
            "max_lr": sch.peak,
            "min_lr": sch.end,
            "base_momentum": sch.base_momentum,
            "max_momentum": sch.max_momentum,
        }
        mine.update({k: _plain(v) for k, v in group.items() if k not in ("params", "lr")})
        theirs = {k: v for k, v in srun["optimizer"].items() if k != "lr"}
        keys = sorted(set(mine) | set(theirs))
        run: dict[str, Any] = {
            "optimizer": {k: {"salt": theirs.get(k), "saltx": mine.get(k)} for k in keys},
            "schedule_total_steps": total,
            "clip": {"salt": salt["gradient_clip_val"], "saltx": conf.trainer.gradient_clip_val},
            "replay": replay,
            "trim_padding": trim,
            "float32_matmul_precision": {
                "salt": srun["float32_matmul_precision"],
                "saltx": torch.get_float32_matmul_precision(),
            },
            "steps": [],
        }
        for step, (start, stop) in enumerate(slices):
            theirs_step = srun["steps"][step]
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            lr, beta1 = float(group["lr"]), float(group["betas"][0])
            row: dict[str, Any] = {
                "jets": [start, stop],
                "lr": {"salt": theirs_step["lr"], "saltx": lr},
                "beta1": {"salt": theirs_step["beta1"], "saltx": beta1},
            }
            if replay:  # salt-ml's gradients into saltx's optimizer and schedule
                salt_grads = to_saltx(theirs_step["grads"])
                for n, p in model.named_parameters():
                    p.grad = salt_grads[n].to(dtype).clone()
            else:
                batch = dataset[slice(start, stop)]
                batch = batch._replace(inputs={k: v.to(dtype) for k, v in batch.inputs.items()})
                if step == 0:  # what the track init net sees, on the plain (untrimmed) path
                    seen: dict[str, torch.Tensor] = {}
                    hook = capture_input(first, seen)
                    with torch.no_grad():
                        model.representations(batch.inputs, batch.masks)
                    hook.remove()
                    valid = ~theirs_step["pad_mask"]
                    row["init_net_input"] = {
                        "shape_salt": list(theirs_step["init_input"].shape),
                        "shape_saltx": list(seen["x"].shape),
                        "valid_tracks": int(valid.sum()),
                        "rel_diff_valid": rel_diff(
                            seen["x"][valid], theirs_step["init_input"][valid]
                        ),
                    }
                losses = train_step(model, batch, state.precision, 1, True)
                grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
                row["losses"] = compare_losses(losses, theirs_step["losses"], conv.task_names)
                row["grads"] = per_group(grads, to_saltx(theirs_step["grads"]))
                if step == 0 and dtype_name == "float32":  # float32 noise, both frameworks
                    row["grads_vs_salt_float64"] = {
                        "saltx": per_group(grads, reference),
                        "salt": per_group(to_saltx(theirs_step["grads"]), reference),
                    }
            # the loop's _optimizer_step: precision.step (clip + step), schedule, zero_grad
            state.precision.step(
                state.optimizer, model.parameters(), conf.trainer.gradient_clip_val
            )
            state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
            updates = {n: p.detach() - before[n] for n, p in model.named_parameters()}
            row["updates"] = per_group(updates, to_saltx(theirs_step["updates"]))
            run["steps"].append(row)
        params = {n: p.detach() for n, p in model.named_parameters()}
        run["params"] = sum(p.numel() for p in params.values())
        run["final_params"] = per_group(params, to_saltx(srun["final"]))
        result["runs"][run_name] = run
        model.to(torch.float32)
    torch.set_float32_matmul_precision(own_matmul)
    return result


def compare_losses(ours: dict, theirs: dict, names: dict[str, str]) -> dict[str, dict]:
    """Each task's loss and the total, salt-ml vs saltx, with the relative difference."""
    out = {}
    total = 0.0
    for salt_task, value in theirs.items():
        if salt_task == "loss":
            continue
        mine = float(ours[names[salt_task]].detach())
        total += mine
        out[names[salt_task]] = {"salt": value, "saltx": mine}
    out["total"] = {"salt": theirs["loss"], "saltx": total}
    for v in out.values():
        v["rel_diff"] = abs(v["saltx"] - v["salt"]) / abs(v["salt"])
    return out


# ========================================================================== driver
def batch_slices(n_jets: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """A fixed sequence of full-batch slices (a shuffled order, repeated as needed)."""
    import numpy as np

    full = n_jets // batch_size
    order = np.random.default_rng(seed).permutation(full)
    ids = [int(order[i % full]) for i in range(steps)]
    return [[b * batch_size, (b + 1) * batch_size] for b in ids]


def run_salt(args: argparse.Namespace, data: Path, work: Path, slices: list) -> dict:
    """Run :func:`salt_side` in the salt-ml venv; returns what it saved."""
    import torch

    peers = Path(os.environ.get("PEERS", ROOT.parent / "peers"))
    python = Path(os.environ.get("SALT_VENV", peers / "salt-venv")) / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"salt-ml venv not found ({python}): run {args.kit}/setup.sh")
    cmd = [
        str(python),
        __file__,
        "--salt-side",
        f"--work={work}",
        f"--data={data}",
        f"--kit={args.kit}",
        f"--seed={args.seed}",
        f"--batch-size={args.batch_size}",
        f"--num-train={args.num_train}",
        f"--total-steps={args.total_steps}",
        f"--slices={json.dumps(slices)}",
    ]
    env = dict(os.environ, COMET_DISABLE_AUTO_LOGGING="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("COMET_API_KEY", None)
    log = work / "salt_side.log"
    with log.open("w") as fo:
        rc = subprocess.call(cmd, stdout=fo, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise SystemExit(f"salt-ml side failed (exit {rc}); log {log}:\n{log.read_text()[-3000:]}")
    return torch.load(work / "salt_steps.pt", weights_only=False)


def init_distributions(
    args: argparse.Namespace, data: Path, work: Path, seeds: int, min_size: int = 256
) -> dict[str, Any]:
    """salt-ml's initial weights (one seed, converted) against saltx's ``gn2_salt013`` as
    built with ``seeds`` seeds: per tensor, the standard deviation and the largest |value|
    (saltx's averaged over its seeds). Random tensors of at least ``min_size`` elements are
    compared (the sampling error of a std is then below 3 %); the others are listed."""
    import torch

    from saltx.assemble import build
    from saltx.engine.distributed import DistInfo

    salt = torch.load(work / "converted" / "checkpoints" / "best.pt", weights_only=True)["model"]
    ours: dict[str, list] = {}
    for seed in range(args.seed, args.seed + seeds):
        cfg = saltx_compose(argparse.Namespace(**{**vars(args), "seed": seed}), data, work / "sx")
        torch.manual_seed(seed)
        for k, v in build(cfg, DistInfo()).model.state_dict().items():
            ours.setdefault(k, []).append(v.double())
    out: dict[str, Any] = {"seeds_saltx": seeds, "tensors": {}, "small": [], "zero": []}
    out["missing"] = sorted(set(salt) ^ set(ours))
    for k in sorted(set(salt) & set(ours)):
        ref, x = salt[k].double(), torch.stack(ours[k])
        if not ref.any() and not x.any():
            out["zero"].append(k)
        elif k.startswith("input_norm."):  # not random: the norm dict
            out["tensors"][k] = {"max_abs_diff": float((x - ref).abs().max())}
        elif ref.numel() < min_size:
            out["small"].append(k)
        else:
            dims = tuple(range(1, x.dim()))
            std = float(x.std(dim=dims).mean()) / float(ref.std())
            peak = float(x.abs().amax(dim=dims).mean()) / float(ref.abs().max())
            out["tensors"][k] = {"n": ref.numel(), "std_ratio": std, "max_ratio": peak}
    return out


def worst(values: dict[str, float], n: int = 1) -> str:
    """``value group`` of the ``n`` largest entries."""
    top = sorted(values, key=values.get, reverse=True)[:n]
    return ", ".join(f"{values[name]:.1e} {name}" for name in top)


def report(result: dict, tolerance: float) -> list[str]:
    """Print the comparison; returns the float64 terms beyond ``tolerance``.

    Flagged: the data side, the optimizer settings, and per float64 step the learning
    rate, beta1, the init-net input, each loss and every gradient group; the updates only
    in the replay run (same gradients). With its own gradients, Adam's update of an element
    whose gradient is near eps (1e-8) magnifies the gradients' rounding (saltx's losses are
    float32), so those updates are shown, not flagged.
    """
    d = result["data"]
    print("== data side (salt-ml vs saltx training loaders, same file)")
    print(f"  training jets {d['train_jets']}; steps per epoch {d['steps_per_epoch']}")
    print(
        f"  jets per epoch {d['jets_per_epoch']}; the same jets in each epoch: "
        f"{d['same_jets_each_epoch']}; the same batch order: {d['same_batch_order']}"
    )
    for task, cw in d["class_weights"].items():
        print(f"  class weights {task}: max |diff| {cw['max_abs_diff']:.2g}")
    bad = []
    if d["steps_per_epoch"]["salt"] != d["steps_per_epoch"]["saltx"]:
        bad.append("steps per epoch")
    if not d["same_jets_each_epoch"]:
        bad.append("jets per epoch")
    bad += [f"class weights {t}" for t, cw in d["class_weights"].items() if cw["max_abs_diff"]]
    for name, run in result["runs"].items():
        flag = name.startswith("float64")
        how = "salt-ml's gradients replayed" if run["replay"] else "own forward/backward"
        print(
            f"== {name} ({how}, trim_padding={run['trim_padding']}): {run['params']:,} "
            f"parameters; schedule over {run['schedule_total_steps']} steps; gradient clip "
            f"{run['clip']}; float32 matmul precision {run['float32_matmul_precision']}"
        )
        diffs = {k: v for k, v in run["optimizer"].items() if v["salt"] != v["saltx"]}
        print(
            f"  optimizer settings equal: {sorted(k for k in run['optimizer'] if k not in diffs)}"
        )
        for k, v in diffs.items():
            print(f"  optimizer {k}: salt {v['salt']} vs saltx {v['saltx']}")
        if flag:
            bad += [f"{name} optimizer {k}" for k in diffs]
        x = run["steps"][0].get("init_net_input")
        if x:
            print(
                f"  track init-net input (normalised tracks + jet features), "
                f"{x['valid_tracks']} valid tracks: rel diff {x['rel_diff_valid']:.1e} "
                f"(salt {x['shape_salt']}, saltx {x['shape_saltx']})"
            )
            if flag and x["rel_diff_valid"] > tolerance:
                bad.append(f"{name} init-net input")
        print(
            "  step | lr salt-ml (rel diff) | beta1 diff | loss rel diff: jet / origin / "
            "vertexing / total | worst gradient group | worst update group"
        )
        for i, row in enumerate(run["steps"]):
            lr_rel = abs(row["lr"]["saltx"] - row["lr"]["salt"]) / row["lr"]["salt"]
            b1 = abs(row["beta1"]["saltx"] - row["beta1"]["salt"])
            terms = {"lr": lr_rel, "beta1": b1}
            if "losses" in row:
                L = row["losses"]
                losses = " / ".join(
                    f"{L[t]['rel_diff']:.1e}"
                    for t in ("jet_classification", "track_origin", "track_vertexing", "total")
                )
                grads = worst(row["grads"])
                terms |= {f"loss {t}": v["rel_diff"] for t, v in L.items()}
                terms |= {f"grad {k}": v for k, v in row["grads"].items()}
            else:
                losses, grads = "(replayed)", "(salt-ml's)"
                terms |= {f"update {k}": v for k, v in row["updates"].items()}
            print(
                f"  {i:4d} | {row['lr']['salt']:.3e} ({lr_rel:.0e}) | {b1:.0e} | {losses} | "
                f"{grads} | {worst(row['updates'])}"
            )
            if flag:
                bad += [f"{name} step {i} {k} ({v:.1e})" for k, v in terms.items() if v > tolerance]
            noise = row.get("grads_vs_salt_float64")
            if noise:
                print(
                    f"  step 0 float32 gradients vs salt-ml's float64 ones: saltx "
                    f"{worst(noise['saltx'], 3)}; salt-ml {worst(noise['salt'], 3)}"
                )
        print(f"  parameters after {len(run['steps'])} steps: {worst(run['final_params'])}")
    init = result.get("init")
    if init:
        rand = {k: v for k, v in init["tensors"].items() if "std_ratio" in v}
        fixed = {k: v for k, v in init["tensors"].items() if "max_abs_diff" in v}
        dev = {k: max(abs(v["std_ratio"] - 1), abs(v["max_ratio"] - 1)) for k, v in rand.items()}
        name = max(dev, key=dev.get) if dev else None
        print(
            f"== initial weights: salt-ml's (seed {result['settings']['seed']}) vs saltx's "
            f"gn2_salt013 ({init['seeds_saltx']} seeds): {len(rand)} random tensors, worst "
            f"|std or max ratio - 1| {dev[name] if name else 0:.3f} ({name}); zero in both: "
            f"{len(init['zero'])}; norm-dict tensors max |diff| "
            f"{max((v['max_abs_diff'] for v in fixed.values()), default=0):.1e}; "
            f"{len(init['small'])} small tensors not compared; missing {init['missing'] or 'none'}"
        )
        bad += [f"init {k} ({v:.2f})" for k, v in dev.items() if v > 0.1]
        bad += [f"init {k}" for k, v in fixed.items() if v["max_abs_diff"]]
        bad += [f"init missing {k}" for k in init["missing"]]
    print(f"== float64 terms beyond {tolerance:g}: {bad or 'none'}")
    return bad


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps compared")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--n-train", type=int, default=3000, help="jets in the tiny train file")
    p.add_argument(
        "--num-train", type=int, default=2750, help="data.num_train (not a multiple of the batch)"
    )
    p.add_argument("--total-steps", type=int, default=400, help="schedule length (the bench's)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1e-5, help="float64 relative tolerance")
    p.add_argument(
        "--init-seeds",
        type=int,
        default=5,
        help="saltx models built to compare initial weight distributions (0: skip)",
    )
    p.add_argument("--out", type=Path, default=CACHE / "step_parity.json", help="JSON copy")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument(
        "--kit",
        type=Path,
        default=Path(os.environ.get("SALT_KIT", ROOT.parent / "shared" / "peers" / "salt")),
    )
    # the salt-ml side (run by the driver in the peer venv)
    p.add_argument("--salt-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--slices", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.salt_side:
        salt_side(args)
        return 0
    sys.path.insert(0, str(SCRIPTS))
    from bench_physics import Settings, write_data

    with tempfile.TemporaryDirectory(prefix="saltx-step-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        settings = Settings(n_train=args.n_train, n_val=500, n_test=500)
        data = write_data(settings, work)
        slices = batch_slices(args.num_train, args.batch_size, args.steps, args.seed)
        args.slices = json.dumps(slices)
        salt = run_salt(args, data, work, slices)
        result = saltx_side(args, data, work, salt)
        if args.init_seeds:
            result["init"] = init_distributions(args, data, work, args.init_seeds)
    result["settings"] = {
        k: v for k, v in vars(args).items() if k not in ("salt_side", "data", "slices")
    } | {"kit": str(args.kit), "out": str(args.out), "work": str(args.work)}
    bad = report(result, args.tolerance)
    result["beyond_tolerance_float64"] = bad
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
