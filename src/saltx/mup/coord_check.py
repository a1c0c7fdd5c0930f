"""Coordinate check: activation sizes per layer against width, under muP and SP.

``python -m saltx.mup.coord_check +experiment=gn2_mup widths=[64,128,256,512] [steps=5]
[lr=0.01] [batch_size=64] [seeds=2] [out_dir=mup_coord_check] [key=value ...]``

For every width (``model.embed_dim`` and every other key of ``mup.embed_dim``) and both
parametrisations, the model is built from the same config, trained for a few steps at a
large learning rate on the same fixed training batches, and the mean absolute value of
each tracked layer's output is recorded before every step and after the last. Under muP
these sizes do not depend on the width; under the standard parametrisation (SP: default
init, plain AdamW with the same learning rate) they grow with it. Writes
``<out_dir>/coord_check.json`` and ``<out_dir>/coord_check.png``.

The short keys (``widths``, ``steps``, ``lr``, ``batch_size``, ``seeds``, ``out_dir``) stand
for ``mup.coord_check.<key>``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mup
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from saltx.assemble import fit_datasets, model_from_config, shape_model
from saltx.engine.distributed import resolve_device
from saltx.mup.shapes import (
    SHAPE_FILE,
    base_shapes_from_config,
    check_widths,
    compose_train,
    dimension_assignments,
    with_assignments,
)

PARAMETRISATIONS = ("muP", "SP")
SHORT_KEYS = ("widths", "steps", "lr", "batch_size", "seeds", "out_dir", "device")


def tracked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose output sizes are recorded: init nets, encoder layers, readout, pooling.

    Returns
    -------
    dict[str, nn.Module]
        ``{qualified name: module}`` in forward order.
    """
    out: dict[str, nn.Module] = {}
    for name, net in getattr(model, "init_nets", {}).items():
        out[f"init_nets.{name}"] = net
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        for i, layer in enumerate(getattr(encoder, "layers", [])):
            out[f"encoder.layers.{i}"] = layer
        if getattr(encoder, "final_linear", None) is not None:
            out["encoder.final_linear"] = encoder.final_linear
    if getattr(model, "pooling", None) is not None:
        out["pooling"] = model.pooling
    return out


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class _Recorder:
    """Forward hooks storing ``mean |output|`` of each tracked layer."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.values: dict[str, float] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is not None:
                self.values[name] = float(t.detach().float().abs().mean())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def width_config(cfg: DictConfig, width: int, muP: bool) -> DictConfig:
    """``cfg`` at ``width`` (every key of ``mup.embed_dim``) with ``model.muP`` set."""
    out = with_assignments(cfg, dimension_assignments(cfg, {"embed_dim": int(width)}))
    out.model.muP = bool(muP)
    check_widths(out, f"width {width}")
    return out


def load_batches(cfg: DictConfig, n: int, batch_size: int) -> list[Any]:
    """The first ``n`` training batches of ``batch_size`` jets (the same for every width)."""
    train = fit_datasets(cfg)["train"]
    if len(train) < batch_size:
        raise ValueError(
            f"coordinate check: the training file {cfg.data.train_file} has {len(train)} jets, "
            f"fewer than batch_size={batch_size}"
        )
    starts = [(i * batch_size) % (len(train) - batch_size + 1) for i in range(n)]
    return [train[s : s + batch_size] for s in starts]


def model_and_optimizer(
    cfg: DictConfig,
    width: int,
    muP: bool,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model of ``cfg`` at ``width`` on ``device`` and its optimizer.

    MuAdamW under muP, else AdamW; weight decay off; constant learning rate (no schedule).
    """
    wcfg = width_config(cfg, width, muP)
    torch.manual_seed(seed)
    model = model_from_config(wcfg)  # muP's base shapes set under muP
    model.to(resolve_device(device))  # in place: the parameters keep their infshape
    if muP:
        return model, mup.MuAdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


def run_width(
    cfg: DictConfig,
    width: int,
    muP: bool,
    batches: Sequence[Any],
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Train one model for ``len(batches)`` steps; ``{layer: [size at forward t]}``.

    There are ``len(batches) + 1`` forwards: one before each step and one after the last.
    Under muP the base shapes come from ``cfg.mup.shape_path``.
    """
    device = resolve_device(device)
    model, optimizer = model_and_optimizer(cfg, width, muP, lr, seed, device)
    model.train()
    recorder = _Recorder(tracked_layers(model))
    sizes: dict[str, list[float]] = {}
    try:
        for t in range(len(batches) + 1):
            batch = batches[min(t, len(batches) - 1)].to(device)
            recorder.values.clear()
            _, losses = model(batch.inputs, batch.masks, batch.labels)
            for name, value in recorder.values.items():
                sizes.setdefault(name, []).append(value)
            if t == len(batches):
                break
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
    finally:
        recorder.remove()
    return sizes


def with_fresh_shapes(cfg: DictConfig, folder: str | Path) -> DictConfig:
    """Write the base shapes of ``cfg.mup`` into ``folder``; a copy of ``cfg`` pointing there.

    Keeps width scans independent of any (possibly stale) shape file at ``mup.shape_path``.
    """
    out = with_assignments(cfg, {"mup.shape_path": str(folder)})
    shapes = base_shapes_from_config(out, shape_model)
    mup.save_base_shapes(shapes, str(Path(folder) / SHAPE_FILE))
    return out


def coord_check(
    cfg: DictConfig,
    widths: Sequence[int],
    steps: int = 5,
    lr: float = 0.01,
    batch_size: int = 64,
    seeds: int = 2,
    parametrisations: Sequence[str] = PARAMETRISATIONS,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Activation sizes per parametrisation, layer, width and step (averaged over seeds).

    Parameters
    ----------
    cfg
        A composed training config with a ``mup:`` block (e.g. ``+experiment=gn2_mup``).
    widths
        Values of the ``embed_dim`` dimension; each a multiple of ``model.num_heads``.
    steps
        Optimizer steps per model.
    lr
        Learning rate (the same for every width and both parametrisations).
    batch_size, seeds
        Jets per batch; initialisations averaged over.
    parametrisations
        ``muP`` and/or ``SP``.
    device
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Returns
    -------
    dict
        ``{"widths", "steps", "lr", "batch_size", "seeds", "layers",
        "sizes": {param: {layer: {str(width): [mean |x| at forward t], t = 0..steps}}}}``.
    """
    if steps < 1 or not widths:
        raise ValueError(f"coordinate check needs steps >= 1 and widths, got {steps}, {widths}")
    bad = [p for p in parametrisations if p not in PARAMETRISATIONS]
    if bad:
        raise ValueError(f"unknown parametrisations {bad}; choose from {PARAMETRISATIONS}")
    batches = load_batches(cfg, steps, batch_size)
    sizes: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="saltx_coord_") as tmp:
        cfg = with_fresh_shapes(cfg, tmp)
        for param in parametrisations:
            for width in widths:
                runs = [
                    run_width(cfg, width, param == "muP", batches, lr, seed, device)
                    for seed in range(seeds)
                ]
                for layer in runs[0]:
                    mean = np.mean([r[layer] for r in runs], axis=0)
                    sizes.setdefault(param, {}).setdefault(layer, {})[str(width)] = [
                        float(v) for v in mean
                    ]
    layers = list(next(iter(sizes.values())))
    return {
        "widths": [int(w) for w in widths],
        "steps": int(steps),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "seeds": int(seeds),
        "layers": layers,
        "sizes": sizes,
    }


def width_growth(result: Mapping[str, Any], param: str, step: int = -1) -> dict[str, float]:
    """``{layer: size at the largest width / size at the smallest}`` at ``step``."""
    widths = [str(w) for w in result["widths"]]
    lo, hi = min(widths, key=int), max(widths, key=int)
    out = {}
    for layer, by_width in result["sizes"][param].items():
        small = by_width[lo][step]
        out[layer] = float("inf") if small <= 0 else by_width[hi][step] / small
    return out


def plot_coord_check(result: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per (parametrisation, layer): size against width, one line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(result["sizes"])
    layers = result["layers"]
    widths = result["widths"]
    fig, axes = plt.subplots(
        len(params),
        len(layers),
        figsize=(2.6 * len(layers), 2.6 * len(params)),
        squeeze=False,
        sharex=True,
    )
    cmap = plt.get_cmap("viridis")
    n_t = result["steps"] + 1
    for i, param in enumerate(params):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            by_width = result["sizes"][param].get(layer, {})
            for t in range(n_t):
                ys = [by_width[str(w)][t] for w in widths if str(w) in by_width]
                ax.plot(
                    widths, ys, marker="o", ms=3, color=cmap(t / max(1, n_t - 1)), label=f"t={t}"
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{param}: {layer}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(params) - 1:
                ax.set_xlabel("width", fontsize=8)
            if j == 0:
                ax.set_ylabel("mean |activation|", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"coordinate check (AdamW lr={result['lr']}, {result['seeds']} seeds)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(result: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``coord_check.json`` and ``coord_check.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "coord_check.json"
    json_path.write_text(json.dumps(result, indent=1))
    return json_path, plot_coord_check(result, out / "coord_check.png")


def summary_table(result: Mapping[str, Any]) -> str:
    """Text table: per layer, size(largest width)/size(smallest) after the last step."""
    params = list(result["sizes"])
    growth = {p: width_growth(result, p) for p in params}
    w = max(len(layer) for layer in result["layers"])
    lines = [f"{'layer':<{w}}  " + "  ".join(f"{p + ' growth':>11}" for p in params)]
    for layer in result["layers"]:
        lines.append(f"{layer:<{w}}  " + "  ".join(f"{growth[p][layer]:>11.2f}" for p in params))
    return "\n".join(lines)


def split_args(argv: Sequence[str]) -> list[str]:
    """Map the short keys (``widths=...``) to ``mup.coord_check.<key>=...`` overrides."""
    out = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        out.append(f"mup.coord_check.{arg}" if key in SHORT_KEYS else arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m saltx.mup.coord_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("overrides", nargs="*", help="+experiment=gn2_mup widths=[64,128] ...")
    args = parser.parse_args(argv)
    cfg = compose_train(split_args(args.overrides))
    cc = cfg.mup.coord_check
    result = coord_check(
        cfg,
        widths=list(cc.widths),
        steps=int(cc.steps),
        lr=float(cc.lr),
        batch_size=int(cc.batch_size),
        seeds=int(cc.seeds),
        device=str(cc.device),
    )
    json_path, png_path = write_results(result, cc.out_dir)
    print(summary_table(result))
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
