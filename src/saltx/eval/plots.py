"""PNG plots of a tagger's performance (matplotlib, Agg backend: no display needed).

``puma-hep`` would be the ATLAS choice, but installing it downgrades numpy and matplotlib
below the versions saltx pins, so the two plots are drawn with plain matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from saltx.eval.metrics import class_label


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    signal: str,
    background: str,
    path: str | Path,
) -> Path:
    """Background rejection versus signal efficiency, log y.

    Parameters
    ----------
    curves
        Tagger name -> ``(efficiencies (E,), rejections (E,))``; the first is the main one,
        others (reference taggers) are overlaid.
    signal, background
        Class names, used for axis labels.
    path
        Output PNG path.

    Returns
    -------
    Path
        The written file.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for i, (name, (effs, rej)) in enumerate(curves.items()):
        ok = np.isfinite(rej) & (rej > 0)
        ax.plot(effs[ok], rej[ok], label=name, lw=2 if i == 0 else 1.5, ls="-" if i == 0 else "--")
    ax.set_yscale("log")
    ax.set_xlabel(class_label(signal).eff_str)
    ax.set_ylabel(class_label(background).rej_str)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_discriminant(
    disc: np.ndarray,
    truth: np.ndarray,
    classes: list[str],
    xlabel: str,
    path: str | Path,
    bins: int = 50,
) -> Path:
    """Normalised discriminant histograms, one per truth class.

    Parameters
    ----------
    disc
        ``(J,)`` discriminant values.
    truth
        ``(J,)`` truth class names.
    classes
        Classes to draw (those with no jets are skipped).
    xlabel
        Axis label, e.g. ``"$D_b$"``.
    path
        Output PNG path.
    bins
        Number of bins over the finite range of ``disc``.

    Returns
    -------
    Path
        The written file.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    finite = disc[np.isfinite(disc)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for name in classes:
        values = disc[(truth == name) & np.isfinite(disc)]
        if values.size == 0:
            continue
        lb = class_label(name)
        ax.hist(
            values,
            bins=edges,
            density=True,
            histtype="step",
            lw=1.5,
            label=lb.label,
            color=lb.colour,
        )
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Normalised number of jets")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
