"""``python -m saltx.train`` / ``python -m saltx.evaluate`` with fault injection.

Usage::

    SALTX_TEST_FAULT=SPEC[,SPEC...] python tests/reliability/fault_runner.py train KEY=VALUE...
    SALTX_TEST_FAULT=predict@2 python tests/reliability/fault_runner.py evaluate run_dir=RUN

The runner installs hooks into saltx (the engine offers no fault hook of its own), then
calls the real Hydra entry point. At the chosen point the process SIGKILLs *itself*: the
same abrupt death as ``kill -9`` from outside (no handler, no ``finally``, no flush), but
at a deterministic place. Steps count optimizer steps from 1 (step N takes the counter from
N-1 to N), across resumes.

Specs:

``step@N``
    die inside optimizer step N: after forward/backward, before the weights change.
``val@N``
    die in the middle of the validation run at step N (after its first batch).
``write:NAME@N``
    die half way through the atomic write of ``checkpoints/NAME`` at step N (half the
    bytes are in the temporary file, fsync-ed).
``pause@N``
    at step N create the file ``$SALTX_TEST_FAULT_MARK`` and wait until
    ``$SALTX_TEST_FAULT_RELEASE`` exists (the parent kills or signals meanwhile).
``predict@K``
    (evaluate) die after K batches were appended to the temporary predictions file.

``SALTX_TEST_FAULT_RANK=R`` applies the faults on DDP rank ``R`` only.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ENV = "SALTX_TEST_FAULT"


def die() -> None:
    """SIGKILL this process (as ``kill -9``)."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def parse(spec: str) -> list[tuple[str, str | None, int]]:
    """``"write:last.pt@9,val@10"`` -> ``[("write", "last.pt", 9), ("val", None, 10)]``."""
    out = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, at = part.partition("@")
        kind, _, arg = kind.partition(":")
        out.append((kind, arg or None, int(at)))
    return out


def pause(step: int) -> None:
    """Signal the parent through the mark file and wait for the release file."""
    mark, release = (
        os.environ.get("SALTX_TEST_FAULT_MARK"),
        os.environ.get("SALTX_TEST_FAULT_RELEASE"),
    )
    if mark:
        Path(mark).write_text(f"{os.getpid()} {step}\n")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (release and Path(release).exists()):
        time.sleep(0.02)


def install_train(faults: list[tuple[str, str | None, int]]) -> None:
    """Hooks into the training loop and the checkpoint writer."""
    from saltx.engine import checkpoint as ckpt_mod
    from saltx.engine import loop as loop_mod

    wanted = {(k, a): n for k, a, n in faults}
    state: dict[str, Any] = {"val_armed": False}

    original_step = loop_mod._Loop._optimizer_step

    def optimizer_step(self: Any) -> None:
        step = self.state.progress.step + 1
        if wanted.get(("step", None)) == step:
            die()
        if wanted.get(("pause", None)) == step:
            pause(step)
        original_step(self)

    original_validate = loop_mod._Loop._validate

    def validate(self: Any, epoch: int | None = None) -> None:
        state["val_armed"] = wanted.get(("val", None)) == self.state.progress.step
        try:
            original_validate(self, epoch)
        finally:
            state["val_armed"] = False

    original_evaluate = loop_mod.evaluate

    def evaluate(model: Any, loader: Any, *args: Any, **kwargs: Any) -> Any:
        if state["val_armed"]:
            loader = _die_after(loader, 1)
        return original_evaluate(model, loader, *args, **kwargs)

    original_save = ckpt_mod.save_checkpoint

    def save_checkpoint(rundir: Any, name: str, ckpt: Any) -> str:
        if wanted.get(("write", name)) == ckpt["state"]["step"]:

            def half_then_die(f: Any) -> None:
                import torch

                buf = io.BytesIO()
                torch.save(ckpt, buf)
                data = buf.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()

            return rundir.write_with(f"{ckpt_mod.CKPT_DIR}/{name}", half_then_die)
        return original_save(rundir, name, ckpt)

    loop_mod._Loop._optimizer_step = optimizer_step
    loop_mod._Loop._validate = validate
    loop_mod.evaluate = evaluate
    ckpt_mod.save_checkpoint = save_checkpoint


def _die_after(loader: Any, n: int) -> Any:
    for i, batch in enumerate(loader):
        if i >= n:
            die()
        yield batch


def install_evaluate(faults: list[tuple[str, str | None, int]]) -> None:
    """Hook into the predictions writer."""
    from saltx.eval import predictions

    after = {k: n for k, _, n in faults}.get("predict")
    if after is None:
        return
    original = predictions.H5Appender.append
    calls = {"n": 0}

    def append(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= after:
            self.file.flush()
            die()
        return out

    predictions.H5Appender.append = append


def main() -> None:
    # A test session started under `nohup` or as a background job hands SIGHUP or SIGINT
    # down ignored, and saltx keeps an ignored signal ignored (as Python does for SIGINT);
    # the run under test must get the stop signals as a batch system or terminal sends them.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    entry, overrides = sys.argv[1], sys.argv[2:]
    faults = parse(os.environ.get(ENV, ""))
    only = os.environ.get(f"{ENV}_RANK")  # faults for this DDP rank only
    if only is not None and only != os.environ.get("RANK", "0"):
        faults = []
    if entry == "train":
        install_train(faults)
        from saltx.train import main as entry_main
    elif entry == "evaluate":
        install_evaluate(faults)
        from saltx.evaluate import main as entry_main
    else:
        raise SystemExit(f"unknown entry {entry!r}: use train or evaluate")
    sys.argv = [f"saltx.{entry}", *overrides]
    entry_main()


if __name__ == "__main__":
    main()
