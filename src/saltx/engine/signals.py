"""Stopping a run cleanly on the signals that batch systems and terminals send.

SLURM's ``scancel`` and pre-emption send SIGTERM (to every process of the job step),
``#SBATCH --signal=USR1@90`` sends SIGUSR1 before the time limit, Ctrl-C sends SIGINT to
the terminal's foreground process group and a closed terminal sends SIGHUP. The training
process records the first of these (:class:`StopSignals`); the loop finishes the optimizer
step it is in, saves ``checkpoints/last.pt`` and ends with :func:`exit_code`. Data-loader
workers ignore the same signals (``saltx.data.loader``) and leave the shutdown to the
main process. See docs/reliability.md.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from saltx.data.loader import STOP_SIGNALS

__all__ = ["STOP_SIGNALS", "StopSignals", "exit_code", "signal_name"]


def exit_code(signum: int) -> int:
    """Exit code of a run stopped by ``signum`` after saving: ``128 + signum``.

    The shell's code for a death by that signal, so a batch script reads both the same
    way: SIGHUP 129, SIGINT 130, SIGUSR1 138, SIGTERM 143.
    """
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (``signal <n>`` for numbers Python has no name for)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Records the first stop signal (SIGTERM, SIGINT, SIGHUP, SIGUSR1) this process receives.

    The handler only sets :attr:`signum`: the training loop decides where to stop. A
    signal that was ignored when the handlers were installed (``nohup`` ignores SIGHUP, a
    shell's background job SIGINT) stays ignored. Only the main thread can install
    handlers; elsewhere :meth:`install` does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        """Name of the signal received (``SIGTERM``), or ``""``."""
        return signal_name(self.signum) if self.signum is not None else ""

    def install(self) -> None:
        """Catch every stop signal not ignored already (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
