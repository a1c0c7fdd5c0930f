"""The training loop.

Read top to bottom: :func:`fit` joins the process group and calls :func:`run`, which
builds the model and loaders (the build function), wraps optimizer, schedule and
precision into one state (:func:`build_state`), resumes when asked (:func:`resume`),
writes the run directory's files (:func:`start_run_dir`), and then loops over epochs and
batches (``_Loop``) with :func:`train_step` and :func:`evaluate`, saving checkpoints with
:func:`save_checkpoint`.

What the loop needs from the rest of saltx comes through a *build function*
``build(cfg, info) -> Components`` (model, train/val loaders, metadata, files to copy), so
the loop runs on any model whose ``forward(inputs, masks, labels)`` returns
``(preds, losses)`` and any loader of :class:`~saltx.data.batch.Batch` objects. What plugs
into the loop (Katib's metrics writer, Optuna's pruning) comes as a list of
:class:`~saltx.engine.callbacks.Callback` objects.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from saltx.config import TrainConfig, TrainerConfig, typed_config
from saltx.data.batch import Batch
from saltx.engine import checkpoint as ckpt_io
from saltx.engine.allocator import reuse_freed_memory
from saltx.engine.callbacks import Callback, FitStart
from saltx.engine.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_object,
    check_resume_world_size,
    cleanup,
    gather_objects,
    setup_distributed,
    unwrap,
)
from saltx.engine.flops import FlopCounter, peak_flops
from saltx.engine.loggers import LoggerGroup, build_loggers
from saltx.engine.precision import Precision, enable_tf32
from saltx.engine.progress import ProgressBar, count_parameters, print_model_summary
from saltx.engine.run_setup import (
    plain_config,
    resolve_run_dir,
    write_run_files,
)
from saltx.engine.schedule import OneCycleSchedule, build_optimizer, total_optimizer_steps
from saltx.engine.signals import StopSignals, exit_code, signal_name
from saltx.engine.state import TrainState, preserve_rng, rank_seed, seed_everything
from saltx.engine.threads import configure_threads, thread_governor
from saltx.io.fs import local_dir
from saltx.io.rundir import RunDir


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """A stop signal arrived and ``last.pt`` was saved; ``saltx.train`` exits with
    :attr:`exit_code` (``128 + signum``: SIGTERM 143, SIGINT 130, SIGHUP 129, SIGUSR1 138).

    ``step`` is the optimizer step saved (``None`` when the process stopped before
    training started, e.g. a spawned rank that never reported).
    """

    def __init__(self, step: int | None, checkpoint: str | None, signum: int) -> None:
        where = f"at step {step}" if step is not None else "before training started"
        super().__init__(f"stopped by {signal_name(signum)} {where}; last checkpoint: {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """``128 + signum``."""
        return exit_code(self.signum)


@dataclass
class Components:
    """What a build function hands to the loop.

    Attributes
    ----------
    model
        The model on CPU; ``model(inputs, masks, labels) -> (preds, losses)`` with
        ``losses`` a dict of weighted scalar losses per task.
    train_loader
        This rank's training batches; ``len()`` is the batches per epoch. When it has
        ``set_epoch(epoch, start_batch)`` it is called before each epoch (exact resume).
    val_loader
        This rank's validation batches (every jet on exactly one rank), or ``None``.
    metadata
        Entries for ``metadata.yaml`` (files, jet counts, class names, UPP attributes).
    files
        ``{name in run dir: source path}`` copied into the run directory (norm/class dicts).
    """

    model: torch.nn.Module
    train_loader: Iterable[Batch]
    val_loader: Iterable[Batch] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


BuildFn = Callable[[DictConfig, DistInfo], Components]


# -- small helpers ---------------------------------------------------------------------------
def configure_torch(tcfg: TrainerConfig, info: DistInfo, workers: int = 0) -> None:
    """Threads (from the usable CPUs, ``saltx.engine.threads``), determinism, TF32 (or
    ``trainer.float32_matmul_precision``) and the host allocator for this process;
    ``workers``: its loader worker processes. ``tcfg`` is the ``trainer`` section typed
    (:func:`saltx.config.typed_config`, or composed on the schema)."""
    if tcfg.reuse_freed_memory:
        reuse_freed_memory()
    configure_threads(tcfg.num_threads, workers=workers, gpu=info.device.type == "cuda")
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    enable_tf32(info.device)
    if tcfg.float32_matmul_precision:
        # `salt fit` sets "medium": bfloat16 float32-matmuls on CPUs with AMX/AVX512-BF16
        torch.set_float32_matmul_precision(str(tcfg.float32_matmul_precision))


def compile_model(model: torch.nn.Module, options: Mapping[str, Any] | None = None) -> int:
    """Compile every transformer block in place; returns how many modules were compiled.

    ``nn.Module.compile`` keeps the module object, so state-dict keys carry no
    ``_orig_mod.`` prefix. Models without ``encoder.layers`` are compiled whole (in place).
    ``options`` go to ``torch.compile`` (``mode``, ``backend``, ``dynamic``, ...).

    Shapes are dynamic by default (``dynamic=True``): the model trims padded slots and
    runs the encoder on groups of jets of similar length, so the blocks see a new
    ``(batch, length)`` in nearly every call. Compiling for symbolic sizes from the start
    gives one graph (plus one for a one-jet group, which torch specialises) instead of a
    recompilation per shape up to dynamo's recompile limit; the blocks share it (same
    code, parameters are graph inputs). Pass ``dynamic=None`` for torch's default.
    """
    kwargs = {"dynamic": True, **(options or {})}
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
        for block in layers:
            block.compile(**kwargs)
        return len(layers)
    model.compile(**kwargs)
    return 1


def set_loader_position(loader: Iterable[Batch], epoch: int, start_batch: int) -> int:
    """Tell ``loader`` the epoch and start batch; returns batches the caller must skip."""
    set_epoch = getattr(loader, "set_epoch", None)
    if set_epoch is None:
        return start_batch
    if "start_batch" in inspect.signature(set_epoch).parameters:
        set_epoch(epoch, start_batch=start_batch)
        return 0
    set_epoch(epoch)
    return start_batch


def epoch_batches(loader: Iterable[Batch], epoch: int, start_batch: int) -> Iterator[Batch]:
    """Batches of ``epoch`` from ``start_batch`` on (iterator created RNG-neutrally)."""
    with preserve_rng():
        skip = set_loader_position(loader, epoch, start_batch)
        it = iter(loader)
        for _ in range(skip):
            next(it)
    return it


class NonFiniteGuard:
    """Remembers, on the device and without syncing, the first step with a non-finite loss."""

    def __init__(self, device: torch.device) -> None:
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_tasks: torch.Tensor | None = None

    def update(self, losses: torch.Tensor, step: int) -> None:
        """``losses``: ``(T,)`` detached per-task losses of optimizer step ``step``."""
        bad = ~torch.isfinite(losses)
        if self.bad_tasks is None:
            self.bad_tasks = torch.zeros_like(bad)
        new = bad.any() & (self.first_step < 0)
        self.first_step = torch.where(new, torch.full_like(self.first_step, step), self.first_step)
        self.bad_tasks = torch.where(new, bad, self.bad_tasks)

    def check(self, names: list[str], info: DistInfo, epoch: int, last_good: str | None) -> None:
        """Raise :class:`NonFiniteLossError` (on every rank) if any rank saw a bad loss."""
        if self.bad_tasks is None:
            return
        flags = torch.cat([self.first_step.view(1) + 1, self.bad_tasks.long()])
        flags = all_reduce_max(flags, info).tolist()
        if flags[0] <= 0:
            return
        tasks = [n for n, bad in zip(names, flags[1:], strict=True) if bad]
        where = last_good or "none (no checkpoint was written before the failure)"
        raise NonFiniteLossError(
            f"non-finite training loss at optimizer step {int(flags[0]) - 1} (epoch {epoch}) "
            f"in task(s) {', '.join(tasks)}. Training stopped; the last good checkpoint is "
            f"{where}. Try a lower lrs.max, trainer.gradient_clip_val, trainer.precision=32, "
            "or check the inputs (data.non_finite_to_num)."
        )


class LossMeter:
    """Sums per-task losses on the device between two logs (no sync per step)."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.steps = 0
        self.jets = 0
        self.t0 = time.perf_counter()

    def add(self, losses: torch.Tensor, jets: int) -> None:
        self.sum = losses.detach().clone() if self.sum is None else self.sum + losses.detach()
        self.steps += 1
        self.jets += jets

    def reset(self) -> None:
        self.sum, self.steps, self.jets = None, 0, 0
        self.t0 = time.perf_counter()


# -- the named steps --------------------------------------------------------------------------
def forward_losses(
    model: torch.nn.Module, batch: Batch, precision: Precision
) -> dict[str, torch.Tensor]:
    """Forward pass under autocast; returns the weighted loss per task."""
    with precision.autocast():
        _, losses = model(batch.inputs, batch.masks, batch.labels)
    if not losses:
        raise RuntimeError("the model returned no losses: are the batch labels missing?")
    return losses


def train_step(
    model: torch.nn.Module,
    batch: Batch,
    precision: Precision,
    accumulate: int,
    sync: bool,
) -> dict[str, torch.Tensor]:
    """Forward and backward of one (micro-)batch; gradients are accumulated.

    ``sync=False`` skips DDP's gradient all-reduce (inside an accumulation window).
    """
    no_sync = (
        model.no_sync()
        if isinstance(model, DistributedDataParallel) and not sync
        else contextlib.nullcontext()
    )
    with no_sync:
        losses = forward_losses(model, batch, precision)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        precision.backward(total / accumulate)
    return losses


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    precision: Precision,
    info: DistInfo,
    task_names: list[str] | None = None,
    limit_batches: int = -1,
) -> dict[str, float]:
    """Validation losses over every jet, each counted once across ranks.

    Per task: ``sum over batches and ranks (loss × jets) / total jets``. ``task_names``
    fixes the order of the all-reduced vector (default: the first batch's loss names).
    Runs RNG-neutrally, so validating never changes the training random stream.
    """
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    names = list(task_names or [])
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=info.device)
    with preserve_rng():
        for i, batch in enumerate(loader):
            if 0 <= limit_batches <= i:
                break
            batch = batch.to(info.device, non_blocking=True)
            losses = forward_losses(bare, batch, precision)
            if not names:
                names = list(losses)
                sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=info.device)
            n = batch.num_jets
            values = torch.stack([losses[k].detach().double() for k in names])
            sums[:-1] += values * n
            sums[-1] += n
    bare.train(was_training)
    sums = all_reduce_sum(sums, info).tolist()
    count = sums[-1]
    if count == 0:
        return {}
    per_task = {f"val/{k}_loss": v / count for k, v in zip(names, sums[:-1], strict=True)}
    return {"val/loss": sum(per_task.values()), **per_task}


def save_checkpoint(
    state: TrainState, rundir: RunDir, names: list[str], info: DistInfo
) -> str | None:
    """Rank 0 writes ``checkpoints/<name>`` for every name; all ranks then meet at a barrier.

    Every rank's RNG state is gathered so that a resume with the same world size restores
    each rank's random stream exactly.
    """
    rng = _gather_rng(info)
    path = None
    if info.is_main:
        ckpt = state.state_dict(rng=rng)
        for name in names:
            path = ckpt_io.save_checkpoint(rundir, name, ckpt)
    barrier(info)
    return path


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    from saltx.engine.state import capture_rng

    return gather_objects(capture_rng(), info)


# -- the run ----------------------------------------------------------------------------------
def fit(
    cfg: DictConfig,
    build: BuildFn,
    callbacks: Sequence[Callback] = (),
    stop: StopSignals | None = None,
) -> dict[str, float]:
    """Join the process group (when launched distributed), train, leave the group.

    ``callbacks`` are called in order (:mod:`saltx.engine.callbacks`). ``stop`` records the
    stop signals (SIGTERM, SIGINT, SIGHUP, SIGUSR1); by default the loop installs its own
    handlers while it runs.
    """
    conf = typed_config(cfg)  # the loop's settings, typed: defaults live in saltx.config
    info = setup_distributed(conf.trainer.accelerator, conf.trainer.ddp_timeout_s)
    matmul = torch.get_float32_matmul_precision()  # run() may change it for the run
    try:
        return run(cfg, conf, build, info, callbacks, stop)
    finally:
        torch.set_float32_matmul_precision(matmul)
        cleanup()


def build_state(
    conf: TrainConfig,
    model: torch.nn.Module,
    batches_per_epoch: int,
    config: dict[str, Any],
    info: DistInfo,
) -> tuple[TrainState, int]:
    """Optimizer, OneCycle schedule and precision around ``model``; returns the state and
    the schedule's total optimizer steps."""
    tcfg, lrs = conf.trainer, conf.lrs
    optimizer = build_optimizer(
        conf.optimizer,
        model.parameters(),
        lr=float(lrs.max),
        weight_decay=float(lrs.weight_decay),
        device=info.device,
        allowed_targets=conf.allowed_targets,
    )
    accumulate = tcfg.accumulate_grad_batches
    total_steps = lrs.total_steps or total_optimizer_steps(
        tcfg.max_epochs, tcfg.max_steps, batches_per_epoch, accumulate
    )
    scheduler = OneCycleSchedule(
        optimizer,
        total_steps,
        initial=float(lrs.initial),
        peak=float(lrs.max),
        end=float(lrs.end),
        pct_start=float(lrs.pct_start),
        cycle_momentum=lrs.cycle_momentum,
        base_momentum=float(lrs.base_momentum),
        max_momentum=float(lrs.max_momentum),
    )
    precision = Precision(tcfg.precision, info.device)
    return TrainState(model, optimizer, scheduler, precision, config), total_steps


def resume(state: TrainState, conf: TrainConfig, rundir: RunDir, info: DistInfo) -> str | None:
    """Load the checkpoint to resume from, if any (rank 0 picks it, every rank loads it).

    Rank 0 also refuses to start afresh over an earlier run's checkpoints unless
    ``overwrite=true`` (:func:`saltx.engine.checkpoint.find_resume_checkpoint`); its error
    reaches every rank, so none waits for the others until the collective timeout.
    """
    choice: tuple[str | None, str | None] = (None, None)
    if info.is_main:
        try:
            path = ckpt_io.find_resume_checkpoint(
                conf.ckpt_path, conf.trainer.resume, rundir, overwrite=conf.overwrite
            )
            choice = (path, None)
        except Exception as err:
            broadcast_object((None, f"{type(err).__name__}: {err}"), info)
            raise
    path, error = broadcast_object(choice, info)
    if error is not None:
        raise RuntimeError(f"rank 0 could not choose the checkpoint to start from: {error}")
    if path is not None:
        ckpt = ckpt_io.load_checkpoint(path, map_location=info.device)
        check_resume_world_size(ckpt, path, info.world_size)
        # weights only (e.g. converted from Salt): a new run starting from those weights
        weights_only = "optimizer" not in ckpt
        state.load_state_dict(ckpt, rank=info.rank, weights_only=weights_only)
        if info.is_main:
            what = "starting from the weights of" if weights_only else "resuming from"
            print(f"{what} {path} at step {state.progress.step}", flush=True)
    return path


def start_run_dir(
    rundir: RunDir,
    config: dict[str, Any],
    parts: Components,
    info: DistInfo,
    resumed_from: str | None,
    start_step: int = 0,
) -> None:
    """Rank 0 writes config, metadata and dict copies and prints the model summary.

    ``metadata.yaml`` records where this start came from: ``resumed_from`` (the
    checkpoint, or null for a fresh start) and ``start_step`` (its optimizer step).
    """
    if info.is_main:
        meta = dict(parts.metadata)
        meta["trainable_params"] = count_parameters(parts.model)
        meta["world_size"] = info.world_size
        meta["resumed_from"] = resumed_from
        meta["start_step"] = int(start_step)
        write_run_files(rundir, config, meta, parts.files)
        print_model_summary(parts.model)
        print(f"run directory: {rundir.root}", flush=True)
    barrier(info)


def run(
    cfg: DictConfig,
    conf: TrainConfig,
    build: BuildFn,
    info: DistInfo,
    callbacks: Sequence[Callback] = (),
    stop: StopSignals | None = None,
) -> dict[str, float]:
    """Train on this rank; returns the last logged metrics (``val/loss`` ...).

    ``cfg`` goes to the build function and into ``config.yaml``; the loop reads its own
    settings from ``conf``, the same config typed (:func:`saltx.config.typed_config`).

    Raises
    ------
    TrainingInterrupted
        A stop signal arrived (``stop``, or the handlers installed here); ``last.pt``
        holds the step the ranks agreed on.
    """
    tcfg = conf.trainer
    configure_torch(tcfg, info, conf.data.num_workers)
    rundir = RunDir(resolve_run_dir(cfg, info))
    config = plain_config(cfg, rundir.root)

    seed_everything(conf.seed)  # the same on every rank: identical initial weights
    parts = build(cfg, info)
    model = parts.model.to(info.device)
    if tcfg.compile:
        options = {"backend": tcfg.compile_backend}
        if tcfg.compile_mode:
            options["mode"] = tcfg.compile_mode
        compile_model(model, options)
    batches_per_epoch = len(parts.train_loader)  # type: ignore[arg-type]
    if batches_per_epoch < 1:
        raise ValueError("the training loader yields no batches on this rank")
    state, total_steps = build_state(conf, model, batches_per_epoch, config, info)
    seed_everything(rank_seed(conf.seed, info.rank))
    resumed_from = resume(state, conf, rundir, info)
    start_run_dir(rundir, config, parts, info, resumed_from, state.progress.step)

    if info.enabled:
        state.model = DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=tcfg.find_unused_parameters,
        )
    loggers = build_loggers(
        conf.logger,
        rundir,
        local_dir=local_dir(rundir.root),
        run_name=conf.name,
        is_main=info.is_main,
    )
    loggers.log_hyperparams(config)
    for callback in callbacks:
        callback.on_fit_start(FitStart(rundir, info, resumed_from))
    loop = _Loop(
        tcfg,
        info,
        rundir,
        state,
        parts,
        loggers,
        callbacks,
        total_steps,
        batches_per_epoch,
        resumed_from,
    )
    own = stop is None
    stop = StopSignals() if stop is None else stop
    if own:
        stop.install()
    try:
        return loop.run(stop)
    finally:
        if own:
            stop.restore()
        loggers.close()
        loop.bar.close()
        if loop.governor is not None:
            loop.governor.close()


class _Loop:
    """The epoch/batch loop of :func:`run` (one object so the steps can share counters)."""

    def __init__(
        self,
        t: TrainerConfig,
        info: DistInfo,
        rundir: RunDir,
        state: TrainState,
        parts: Components,
        loggers: LoggerGroup,
        callbacks: Sequence[Callback],
        total_steps: int,
        batches_per_epoch: int,
        last_good: str | None,
    ) -> None:
        self.info, self.rundir, self.state = info, rundir, state
        self.parts, self.loggers, self.callbacks = parts, loggers, list(callbacks)
        self.batches_per_epoch = batches_per_epoch
        self.max_epochs = t.max_epochs if t.max_epochs > 0 else math.inf  # -1: no limit
        self.stop_step = t.max_steps if t.max_steps > 0 else total_steps
        self.accumulate = t.accumulate_grad_batches
        self.clip = t.gradient_clip_val
        self.log_every = t.log_every_n_steps
        self.val_every = t.val_check_interval  # None: at each epoch end
        self.ckpt_every = t.checkpoint_every_n_steps
        self.limit_val = t.limit_val_batches
        self.monitor, self.mode = t.monitor, t.monitor_mode
        self.save_every_epoch = t.save_every_epoch
        self.guard = NonFiniteGuard(info.device)
        self.meter = LossMeter()
        self.peak_flops = peak_flops(info.device, state.precision.name, t.peak_tflops)
        self.flops_per_batch: int | None = None
        self.count_flops = self.peak_flops is not None and not t.compile
        self.task_names: list[str] = []
        self.metrics: dict[str, float] = {}
        self.last_good = last_good
        self.validated_at = -1
        # fewer intra-op threads while other processes take this run's CPUs
        self.governor = thread_governor(
            t.adapt_threads, t.deterministic, info.device.type, torch.get_num_threads()
        )
        self.bar = ProgressBar(
            self.stop_step,
            enabled=info.is_main,
            start_step=state.progress.step,
            bar=t.progress_bar,
            every_n_steps=t.progress_every_n_steps,
            every_s=float(t.progress_every_s),
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: StopSignals) -> dict[str, float]:
        p = self.state.progress
        model = self.state.model
        model.train()
        self._stop_if_signalled(stop, agree=True)  # a signal that came during the start
        while p.epoch < self.max_epochs and p.step < self.stop_step:
            micro = 0
            for batch in epoch_batches(self.parts.train_loader, p.epoch, p.batch_in_epoch):
                batch = batch.to(self.info.device, non_blocking=True)
                p.batch_in_epoch += 1
                micro += 1
                boundary = micro == self.accumulate or p.batch_in_epoch >= self.batches_per_epoch
                with self._flop_counter() as counter:
                    losses = train_step(
                        model, batch, self.state.precision, self.accumulate, boundary
                    )
                if counter is not None:
                    self.flops_per_batch = counter.total
                self._track(losses, batch.num_jets)
                if not boundary:
                    continue
                micro = 0
                self._optimizer_step()
                if self._after_step(stop):
                    break
            if p.batch_in_epoch >= self.batches_per_epoch:
                self._end_epoch()
        self.guard.check(self.task_names, self.info, p.epoch, self.last_good)
        if self.validated_at != p.step:
            self._validate()
        self._save([ckpt_io.LAST])
        return dict(self.metrics)

    @contextlib.contextmanager
    def _flop_counter(self) -> Iterator[FlopCounter | None]:
        """Count FLOPs of the first training batch (for MFU) when a peak is known."""
        if not self.count_flops or self.flops_per_batch is not None:
            yield None
            return
        with FlopCounter() as counter:
            yield counter

    def _track(self, losses: Mapping[str, torch.Tensor], jets: int) -> None:
        if not self.task_names:
            self.task_names = list(losses)
        vec = torch.stack([losses[k].detach().float() for k in self.task_names])
        self.guard.update(vec, self.state.progress.step)
        self.meter.add(vec / self.accumulate, jets)

    def _optimizer_step(self) -> None:
        s = self.state
        params = unwrap(s.model).parameters()
        s.precision.step(s.optimizer, params, self.clip)
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.progress.step += 1

    def _after_step(self, stop: StopSignals) -> bool:
        """Logging, validation, checkpoints and stop checks after an optimizer step."""
        p = self.state.progress
        self.bar.update(p.step)
        if self.governor is not None:
            self.governor.poll()
        log_now = p.step % self.log_every == 0
        if log_now:
            self.guard.check(self.task_names, self.info, p.epoch, self.last_good)
            self._log_train()
        if self.val_every and p.step % self.val_every == 0:
            self._validate()
        if self.ckpt_every and p.step % self.ckpt_every == 0:
            self._save([ckpt_io.LAST])
        self._stop_if_signalled(stop, agree=log_now)
        return p.step >= self.stop_step

    def _stop_if_signalled(self, stop: StopSignals, agree: bool) -> None:
        """Save ``last.pt`` and raise :class:`TrainingInterrupted` once a stop signal came.

        One process checks after every optimizer step. DDP ranks check only where
        ``agree`` (log steps, and the start): one small all-reduce takes the largest
        signal number any rank received, so every rank stops after the same step (rank 0
        saves it) and exits with the same code.
        """
        if self.info.enabled:
            if not agree:
                return
            flag = torch.tensor([stop.signum or 0], device=self.info.device)
            signum = int(all_reduce_max(flag, self.info).item())
        else:
            signum = stop.signum or 0
        if not signum:
            return
        step = self.state.progress.step
        self._save([ckpt_io.LAST])
        raise TrainingInterrupted(step, self.last_good, signum)

    def _end_epoch(self) -> None:
        p = self.state.progress
        finished = p.epoch
        p.epoch += 1
        p.batch_in_epoch = 0
        if self.val_every is None:
            self._validate(epoch=finished)
        names = [ckpt_io.LAST]
        if self.save_every_epoch:
            names.append(ckpt_io.epoch_name(finished))
        self._save(names)

    # -- logging, validation, checkpoints ------------------------------------------------------
    def _log_train(self) -> None:
        m, p = self.meter, self.state.progress
        if m.sum is None:
            return
        stats = torch.cat([m.sum / m.steps, torch.tensor([float(m.jets)], device=m.sum.device)])
        stats = all_reduce_sum(stats.double(), self.info).tolist()
        world = self.info.world_size
        elapsed = max(time.perf_counter() - m.t0, 1e-9)
        per_task = {f"train/{k}_loss": v / world for k, v in zip(self.task_names, stats[:-1])}
        out = {"train/loss": sum(per_task.values()), **per_task}
        out["train/lr"] = self.state.scheduler.get_last_lr()[0]
        out["train/jets_per_s"] = stats[-1] / elapsed
        if self.flops_per_batch and self.peak_flops:
            out["train/mfu"] = self.flops_per_batch * m.steps / elapsed / self.peak_flops
        out["epoch"] = float(p.epoch)
        self.metrics.update(out)
        self.loggers.log_metrics(out, p.step)
        self.bar.update(
            p.step,
            epoch=p.epoch,
            loss=out["train/loss"],
            jets_per_s=f"{out['train/jets_per_s']:.0f}",
        )
        m.reset()

    def _validate(self, epoch: int | None = None) -> None:
        p = self.state.progress
        loader = self.parts.val_loader
        if loader is None:
            return
        self.guard.check(self.task_names, self.info, p.epoch, self.last_good)
        t0 = time.perf_counter()
        vals = evaluate(
            self.state.model,
            loader,
            self.state.precision,
            self.info,
            self.task_names,
            self.limit_val,
        )
        self.validated_at = p.step
        self.meter.t0 += time.perf_counter() - t0  # keep validation out of jets/s
        if not vals:
            return
        vals["epoch"] = float(p.epoch if epoch is None else epoch)
        self.metrics.update(vals)
        self.loggers.log_metrics(vals, p.step)
        value = self.metrics.get(self.monitor)
        if value is not None and p.is_better(value, self.mode):
            p.best, p.best_step = float(value), p.step
            self._save([ckpt_io.BEST], update_last_good=False)
        for callback in self.callbacks:
            try:
                callback.on_validation_end(p.step, int(vals["epoch"]), self.metrics)
            except BaseException:  # e.g. Optuna's TrialPruned: keep the step, then stop
                self._save([ckpt_io.LAST])
                raise

    def _save(self, names: list[str], update_last_good: bool = True) -> None:
        p = self.state.progress
        self.guard.check(self.task_names, self.info, p.epoch, self.last_good)
        save_checkpoint(self.state, self.rundir, names, self.info)
        if update_last_good and ckpt_io.LAST in names:
            self.last_good = self.rundir.path(f"{ckpt_io.CKPT_DIR}/{ckpt_io.LAST}")
