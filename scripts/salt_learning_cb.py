"""Lightning callback for ``salt fit`` runs of ``scripts/bench_physics.py``.

Records, into the JSON file named by ``$SALTX_CURVE_OUT``:

* ``params``: the number of trainable parameters;
* ``lr``: ``[step, learning rate, beta1]`` of every optimizer step (the values used by
  that step), to compare salt-ml's schedule with saltx's step by step;
* ``val``: ``{"step": s, "<metric>": value, ...}`` after every validation (the per-task
  validation losses Lightning aggregated over the validation set).

Used as ``salt fit ... --trainer.callbacks+=salt_learning_cb.LearningCurve`` with this
folder on ``PYTHONPATH``. Salt's own code is not touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class LearningCurve(Callback):
    """Write the learning-rate schedule and the validation losses of a run."""

    def __init__(self) -> None:
        super().__init__()
        out = os.environ.get("SALTX_CURVE_OUT")
        if not out:
            raise RuntimeError("set SALTX_CURVE_OUT to the JSON file LearningCurve writes")
        self.out = Path(out)
        self.data: dict[str, Any] = {"lr": [], "val": [], "params": 0}

    def on_fit_start(self, trainer, pl_module) -> None:
        params = (p for p in pl_module.parameters() if p.requires_grad)
        self.data["params"] = sum(p.numel() for p in params)

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
