"""Optimizer and the one-cycle learning-rate schedule built from Salt's ``lrs`` keys.

Salt uses ``torch.optim.lr_scheduler.OneCycleLR(max_lr=lrs.max, ...)``, which writes the
same absolute learning rate into every parameter group. That silently undoes muP's
per-group learning-rate scaling (Salt quirk 15). saltx instead applies the schedule as a
**relative multiplier** of each group's own peak learning rate (``LambdaLR``-style):

``lr_g(step) = peak_lr_g * one_cycle_factor(step)``

where ``peak_lr_g`` is the learning rate the optimizer put into group ``g`` when it was
built with ``lr=lrs.max`` (MuAdamW divides it by the width multiplier for matrix-like
groups). With one group this is exactly Salt's OneCycleLR; with several groups their
ratios survive. Like Salt's default, AdamW's β1 is cycled inversely to the learning rate
(0.95 → 0.85 → 0.95) unless ``lrs.cycle_momentum=false``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from saltx.targets import allow_list, instantiate


def _cosine(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from ``start`` (pct=0) to ``end`` (pct=1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def one_cycle_value(
    step: int, total_steps: int, pct_start: float, start: float, peak: float, end: float
) -> float:
    """Value of a two-phase cosine one-cycle curve at ``step`` (0-based).

    Matches ``torch.optim.lr_scheduler.OneCycleLR`` (two phases, cosine annealing): the
    value rises from ``start`` to ``peak`` until step ``pct_start * total_steps - 1`` and
    falls to ``end`` at step ``total_steps - 1``. Steps past the end keep ``end``.
    """
    if total_steps < 1:
        raise ValueError(f"one-cycle schedule needs total_steps >= 1, got {total_steps}")
    step = min(max(step, 0), total_steps - 1)
    warm_end = float(pct_start * total_steps) - 1.0
    last = float(total_steps - 1)
    if step <= warm_end:
        return _cosine(start, peak, step / warm_end if warm_end > 0 else 1.0)
    span = last - warm_end
    return _cosine(peak, end, (step - warm_end) / span if span > 0 else 1.0)


def one_cycle_factor(
    step: int, total_steps: int, pct_start: float, initial: float, peak: float, end: float
) -> float:
    """Learning-rate multiplier relative to the peak: ``initial/peak → 1 → end/peak``."""
    return one_cycle_value(step, total_steps, pct_start, initial / peak, 1.0, end / peak)


class OneCycleSchedule:
    """Per-group relative one-cycle schedule, stepped after every optimizer step.

    Parameters
    ----------
    optimizer
        The optimizer; each group's current ``lr`` is taken as its peak learning rate.
    total_steps
        Number of optimizer steps in the whole run.
    initial, peak, end
        Salt's ``lrs.initial``, ``lrs.max`` and ``lrs.end`` (absolute learning rates of a
        group whose peak is ``lrs.max``).
    pct_start
        Fraction of the steps spent warming up.
    cycle_momentum
        Cycle β1 (Adam-type) or ``momentum`` (SGD) between ``max_momentum`` (start and
        end) and ``base_momentum`` (at the peak), like OneCycleLR's default.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        *,
        initial: float,
        peak: float,
        end: float,
        pct_start: float = 0.1,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> None:
        if total_steps < 1:
            raise ValueError(
                f"the learning-rate schedule needs at least one optimizer step, got total_steps="
                f"{total_steps}; check trainer.max_epochs / trainer.max_steps and the data size"
            )
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"lrs.pct_start must be in (0, 1), got {pct_start}")
        if peak <= 0:
            raise ValueError(f"lrs.max must be > 0, got {peak}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.initial, self.peak, self.end = float(initial), float(peak), float(end)
        self.pct_start = float(pct_start)
        self.base_momentum, self.max_momentum = float(base_momentum), float(max_momentum)
        self.cycle_momentum = cycle_momentum and all(
            "betas" in g or "momentum" in g for g in optimizer.param_groups
        )
        self.peak_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step: int | None = None) -> float:
        """Learning-rate multiplier at ``step`` (default: the current step)."""
        step = self.step_count if step is None else step
        return one_cycle_factor(
            step, self.total_steps, self.pct_start, self.initial, self.peak, self.end
        )

    def momentum(self, step: int | None = None) -> float:
        """β1 / momentum at ``step``: high when the learning rate is low."""
        step = self.step_count if step is None else step
        return one_cycle_value(
            step,
            self.total_steps,
            self.pct_start,
            self.max_momentum,
            self.base_momentum,
            self.max_momentum,
        )

    def _apply(self) -> None:
        f = self.factor()
        for group, peak_lr in zip(self.optimizer.param_groups, self.peak_lrs, strict=True):
            group["lr"] = peak_lr * f
            if self.cycle_momentum:
                m = self.momentum()
                if "betas" in group:
                    group["betas"] = (m, *tuple(group["betas"])[1:])
                else:
                    group["momentum"] = m

    def step(self) -> None:
        """Advance by one optimizer step."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current learning rate of every group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "step_count": self.step_count,
            "peak_lrs": list(self.peak_lrs),
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step and the per-group peaks, then re-apply the schedule.

        ``total_steps`` comes from the current config, so a resumed run may extend the
        schedule (Salt's ``lrs.last_epoch`` use case).
        """
        if len(state["peak_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"checkpoint schedule has {len(state['peak_lrs'])} parameter groups, the "
                f"optimizer has {len(self.optimizer.param_groups)}"
            )
        self.step_count = int(state["step_count"])
        self.peak_lrs = [float(x) for x in state["peak_lrs"]]
        self._apply()


def total_optimizer_steps(
    max_epochs: int, max_steps: int, batches_per_epoch: int, accumulate: int
) -> int:
    """Optimizer steps in the run: ``max_steps`` when set, else epochs × steps per epoch.

    ``batches_per_epoch`` is the number of batches one rank sees per epoch.
    """
    if max_steps is not None and max_steps > 0:
        return int(max_steps)
    if max_epochs is None or max_epochs < 1:
        raise ValueError(
            "set trainer.max_epochs >= 1 or trainer.max_steps > 0 "
            f"(got max_epochs={max_epochs}, max_steps={max_steps})"
        )
    return int(max_epochs) * max(1, math.ceil(batches_per_epoch / max(1, accumulate)))


def build_optimizer(
    opt_cfg: DictConfig | dict | None,
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    *,
    lr: float,
    weight_decay: float,
    device: torch.device,
    allowed_targets: list[str] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer from a ``_partial_`` config node.

    The target must be allowed (:mod:`saltx.targets`: ``torch.optim.``, ``saltx.``,
    ``mup.MuAdamW`` ... plus ``allowed_targets``, by default the ``allowed_targets`` of the
    config the node belongs to) and be a ``torch.optim.Optimizer``.

    ``lr`` (Salt's ``lrs.max``: the schedule multiplies it) and ``weight_decay`` (Salt's
    ``lrs.weight_decay``) are passed unless the node sets them itself. On CUDA the fused
    kernel is used when the optimizer supports it; elsewhere torch picks ``foreach``.
    """
    if opt_cfg is None:
        opt_cfg = {"_target_": "torch.optim.AdamW", "_partial_": True}
    node = OmegaConf.create(opt_cfg) if isinstance(opt_cfg, dict) else opt_cfg
    if allowed_targets is None:
        allowed_targets = _root_allowed_targets(node)
    if not node.get("_partial_", False):
        raise TypeError(f"optimizer config must be a factory (`_partial_: true`): {node}")
    factory = instantiate(node, "optimizer", torch.optim.Optimizer, allow_list(allowed_targets))
    kwargs: dict[str, Any] = {}
    if node.get("lr") is None:
        kwargs["lr"] = lr
    if node.get("weight_decay") is None:
        kwargs["weight_decay"] = weight_decay
    target = getattr(factory, "func", factory)
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepted = {}
    if device.type == "cuda" and "fused" in accepted and node.get("fused") is None:
        kwargs["fused"] = True
    optimizer = factory(params, **kwargs)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer._target_={node.get('_target_')!r} built a {type(optimizer).__name__}, "
            "not a torch.optim.Optimizer"
        )
    return optimizer


def _root_allowed_targets(node: DictConfig) -> list[str] | None:
    """``allowed_targets`` of the root config ``node`` sits in (None for a detached node)."""
    try:
        value = OmegaConf.select(node, "..allowed_targets", default=None)
    except Exception:  # a node without a parent
        return None
    return None if value is None else list(value)
