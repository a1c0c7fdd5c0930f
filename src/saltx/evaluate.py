"""Evaluate a trained run: predictions h5, physics metrics, plots.

``python -m saltx.evaluate run_dir=RUN [ckpt=best|last|PATH] [data.test_file=F]
[data.num_test=N] [write_tracks=true] [test_suff=S] [beside_ckpt=true] [f_c=0.2]``

The run's own ``config.yaml`` (and its norm/class dict copies) rebuild the model; only
the test-data keys given under ``data`` (and ``parameters``) override it. Outputs go to
``RUN/predictions/``: ``<ckpt stem>__test_<sample>[_S].h5`` (beside the checkpoint with
``beside_ckpt``), ``metrics.json`` and PNG plots (in ``predictions/S/`` with a suffix).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from saltx.config import check_keys, validate_evaluate
from saltx.data.loader import build_dataloader, build_datasets
from saltx.engine.allocator import reuse_freed_memory
from saltx.engine.distributed import resolve_device
from saltx.eval import report
from saltx.eval.predictions import output_spec, prediction_target, write_predictions
from saltx.eval.testset import metric_labels, prepare_test_config
from saltx.run import exit_on_termination, load_run
from saltx.secrets import redacted_console


def evaluate(
    ecfg: DictConfig, wrap_loader: Callable[[Iterable[Any]], Iterable[Any]] | None = None
) -> dict[str, Any]:
    """Write predictions, metrics and plots of a run; return the metrics dict.

    Parameters
    ----------
    ecfg
        The evaluate config (``conf/evaluate.yaml``).
    wrap_loader
        Wraps the test loader (the evaluation benchmark times its batches this way).
    """
    check_keys(ecfg, OmegaConf.load(Path(__file__).parent / "conf" / "evaluate.yaml"))
    validate_evaluate(ecfg)
    run = load_run(str(ecfg.run_dir), ecfg.get("ckpt"), ecfg.get("allowed_targets"))
    if run.cfg.trainer.reuse_freed_memory:
        reuse_freed_memory()  # as in training: no page faults for per-batch tensors
    test_file = prepare_test_config(run, ecfg)
    cfg, model = run.cfg, run.model
    device = resolve_device(str(ecfg.device))
    model.to(device)
    model_name = str(cfg.name)
    spec = output_spec(model.tasks, model_name, str(cfg.data.global_object))
    labels = metric_labels(model, cfg, test_file)
    dataset = build_datasets(cfg.data, labels, "test", seed=int(cfg.seed))["test"]
    loader = build_dataloader(
        dataset,
        batch_size=int(cfg.data.batch_size),
        shuffle=False,
        drop_last=False,
        num_workers=int(cfg.data.num_workers),
    )
    if wrap_loader is not None:
        loader = wrap_loader(loader)
    target, rel, report_rel = prediction_target(run, test_file, ecfg)
    with tempfile.TemporaryDirectory(prefix="saltx-eval-") as tmpdir:
        # remote directories get their files written locally first, then uploaded whole
        out_path = Path(tmpdir if target.remote else target._fs_path(""), rel)
        out_dir = Path(tmpdir if run.rundir.remote else run.rundir._fs_path(report_rel))
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            state = write_predictions(
                model, loader, spec, cfg, ecfg, out_path, len(dataset), device, run.class_names
            )
        finally:
            dataset.close()
        result: dict[str, Any] = {
            "run_dir": run.rundir.root,
            "checkpoint": run.ckpt_path,
            "test_file": test_file,
            "predictions": str(out_path),
            "n_jets": len(dataset),
            "working_points": [float(w) for w in ecfg.working_points],
        }
        jet = spec.jet_classification_task
        names = None if jet is None else model.tasks[jet].class_names
        metrics, pngs = report.test_metrics(
            state, names, cfg, ecfg, out_dir, model_name, len(dataset)
        )
        result.update(metrics)
        if target.remote:
            result["predictions"] = target.copy_in(str(out_path), rel)
        if run.rundir.remote:
            pngs = [run.rundir.copy_in(png, f"{report_rel}/{Path(png).name}") for png in pngs]
    result["plots"] = pngs
    text = json.dumps(report.finite(result), indent=2)
    result["metrics_file"] = run.rundir.write_text(f"{report_rel}/metrics.json", text + "\n")
    report.print_summary(result, model_name)
    return result


@redacted_console
@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``python -m saltx.evaluate``."""
    exit_on_termination()
    evaluate(cfg)


if __name__ == "__main__":
    main()
