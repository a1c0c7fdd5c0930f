"""Lightning callback for ``salt fit`` runs of ``scripts/bench_physics.py``.

Records, into the JSON file named by ``$SALTX_CURVE_OUT``:

* ``params``: the number of trainable parameters;
* ``lr``: ``[step, learning rate, beta1]`` of every optimizer step (the values used by
  that step), to compare salt-ml's schedule with saltx's step by step;
* ``val``: ``{"step": s, "<metric>": value, ...}`` after every validation (the per-task
  validation losses Lightning aggregated over the validation set).

For the paired comparison (``bench_physics.py``'s ``*-paired`` variants), two more settings:

* ``$SALTX_INIT_OUT``: save the initial weights (``{"state_dict": ...}``, as a Lightning
  checkpoint holds them) to this file before the first step, for saltx to start from;
* ``$SALTX_BATCH_ORDER_SEED``: draw the order of the training batches of epoch ``e`` as
  saltx's sampler does for that seed (``numpy.random.default_rng([seed, e]).permutation``
  of the full batches) instead of with ``torch.randperm``. salt-ml's batches stay its own
  (contiguous ``batch_size`` slices of the file, the short one dropped); only the
  permutation is drawn by another generator. The orders used go into ``batch_order``.

Used as ``salt fit ... --trainer.callbacks+=salt_learning_cb.LearningCurve`` with this
folder on ``PYTHONPATH``. Salt's own code is not touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def replay_batch_order(sampler: Any, seed: int, epoch_of: Any, record: dict) -> None:
    """Make salt-ml's ``RandomBatchSampler`` (this instance only) yield its full batches in
    saltx's order for ``seed`` and the epoch ``epoch_of()`` returns."""
    base = type(sampler)
    if not sampler.drop_last or not sampler.shuffle:
        raise RuntimeError(
            "the paired order replaces a shuffled training sampler that drops "
            f"its short batch; got shuffle={sampler.shuffle}, "
            f"drop_last={sampler.drop_last}"
        )

    class SaltxOrder(base):  # type: ignore[misc, valid-type]
        def __iter__(self):
            epoch = int(epoch_of())
            order = np.random.default_rng([seed, epoch]).permutation(int(self.n_batches))
            self.batch_ids = torch.as_tensor(order)
            record[str(epoch)] = order.tolist()
            for b in order:
                yield np.s_[int(b) * self.batch_size : (int(b) + 1) * self.batch_size]

    sampler.__class__ = SaltxOrder


class LearningCurve(Callback):
    """Write the learning-rate schedule and the validation losses of a run."""

    def __init__(self) -> None:
        super().__init__()
        out = os.environ.get("SALTX_CURVE_OUT")
        if not out:
            raise RuntimeError("set SALTX_CURVE_OUT to the JSON file LearningCurve writes")
        self.out = Path(out)
        self.data: dict[str, Any] = {"lr": [], "val": [], "params": 0, "batch_order": {}}
        self.init_out = os.environ.get("SALTX_INIT_OUT")
        order_seed = os.environ.get("SALTX_BATCH_ORDER_SEED")
        self.order_seed = None if order_seed in (None, "") else int(order_seed)

    def on_fit_start(self, trainer, pl_module) -> None:
        params = (p for p in pl_module.parameters() if p.requires_grad)
        self.data["params"] = sum(p.numel() for p in params)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.order_seed is None or stage != "fit":
            return
        # the loader is made (and its first epoch's iterator started) before on_train_start:
        # wrap the datamodule's factory of it (this instance only)
        datamodule = trainer.datamodule
        make = datamodule.train_dataloader
        seed, record = self.order_seed, self.data["batch_order"]

        def train_dataloader() -> Any:
            loader = make()
            replay_batch_order(loader.sampler, seed, lambda: trainer.current_epoch, record)
            return loader

        datamodule.train_dataloader = train_dataloader

    def on_train_start(self, trainer, pl_module) -> None:
        if self.init_out:  # the weights the first step starts from
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            tmp = Path(self.init_out + ".tmp")
            torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, tmp)
            tmp.replace(self.init_out)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        group = trainer.optimizers[0].param_groups[0]
        betas = group.get("betas", (None,))
        self.data["lr"].append([int(trainer.global_step), float(group["lr"]), betas[0]])

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row = {"step": int(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/"):
                row[key] = float(value)
        self.data["val"].append(row)
        self._write()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write()

    def _write(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.out)
