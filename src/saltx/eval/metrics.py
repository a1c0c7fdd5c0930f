"""Physics metrics of a tagger: discriminants, rejections at working points, track metrics.

Pure functions on numpy arrays, testable without any file. The discriminant and the
rejection use atlas-ftag-tools (``ftag.utils.get_discriminant``,
``ftag.utils.calculate_rejection``) so that numbers agree with the ATLAS tools:

* ``D_b = log((p_b + eps) / (f_c p_c + f_tau p_tau + (1 - f_c - f_tau) p_u + eps))``,
* ``D_c = log((p_c + eps) / (f_b p_b + f_tau p_tau + (1 - f_b - f_tau) p_u + eps))``,

with ``eps = 1e-10``. A working point at signal efficiency ``e`` cuts at the
``(1 - e)`` weighted percentile of the signal discriminant (ftag's interpolation); the
rejection of a background is ``1 / (fraction of its jets above the cut)`` (``inf`` when
no background jet passes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ftag import Flavours
from ftag.labels import Label, LabelContainer
from ftag.utils import calculate_rejection, get_discriminant

DEFAULT_WORKING_POINTS: tuple[float, ...] = (0.60, 0.70, 0.77, 0.85)
"""b-tagging (and c-tagging) signal efficiencies at which rejections are reported."""

EPSILON = 1e-10


def class_label(name: str) -> Label:
    """The ftag :class:`~ftag.labels.Label` of a class name, or a generic one.

    Known flavours (``bjets``, ``cjets``, ``ujets``, ``taujets``, ``hbb``, ...) come from
    ``ftag.Flavours``; other names get ``px = "p" + name without a trailing "jets"``.
    """
    if name in Flavours:
        return Flavours[name]
    from ftag.cuts import Cuts

    return Label(name=name, label=name, cuts=Cuts.empty(), colour="grey", category="saltx")


def prob_suffix(name: str) -> str:
    """Output-field suffix of a class: ``bjets`` -> ``pb``, ``taujets`` -> ``ptau``."""
    return class_label(name).px


def fractions_for(
    signal: str, class_names: Sequence[str], fraction: float, f_tau: float = 0.0
) -> dict[str, float]:
    """Background fractions of a two-family discriminant, in ftag's ``frac_str`` keys.

    Parameters
    ----------
    signal
        ``"bjets"`` or ``"cjets"``.
    class_names
        The classes the tagger predicts.
    fraction
        ``f_c`` for b-tagging, ``f_b`` for c-tagging: the weight of the other heavy flavour.
    f_tau
        Weight of ``taujets`` (0 ignores them); light jets get ``1 - fraction - f_tau``.

    Returns
    -------
    dict[str, float]
        e.g. ``{"fc": 0.2, "fu": 0.8, "ftau": 0.0}`` for b-tagging.
    """
    other = {"bjets": "cjets", "cjets": "bjets"}[signal]
    if not 0.0 <= fraction <= 1.0 or not 0.0 <= f_tau <= 1.0 - fraction:
        raise ValueError(
            f"fractions for {signal} tagging must satisfy 0 <= f <= 1 and 0 <= f_tau <= 1 - f; "
            f"got f={fraction}, f_tau={f_tau}"
        )
    fracs = {class_label(c).frac_str: 0.0 for c in class_names if c != signal}
    fracs[class_label(other).frac_str] = fraction
    fracs["fu"] = 1.0 - fraction - f_tau
    if "taujets" in class_names:
        fracs["ftau"] = f_tau
    return fracs


def discriminant(
    probs: Mapping[str, np.ndarray], signal: str, fractions: Mapping[str, float]
) -> np.ndarray:
    """Log-likelihood-ratio discriminant of ``signal`` against weighted backgrounds.

    Parameters
    ----------
    probs
        Class name -> ``(J,)`` probability (``{"bjets": pb, "cjets": pc, ...}``).
    signal
        Name of the signal class.
    fractions
        Background weights keyed by ftag's ``frac_str`` (``fc``, ``fu``, ``ftau``, ...);
        see :func:`fractions_for`.

    Returns
    -------
    np.ndarray
        ``(J,)`` float64 discriminant.
    """
    names = list(probs)
    if signal not in names:
        raise KeyError(f"no probability for the signal class '{signal}'; available: {names}")
    labels = [class_label(n) for n in names]
    # ftag reads fields "<tagger>_<px>" of a structured array; the tagger here is "t".
    size = len(next(iter(probs.values())))
    jets = np.zeros(size, dtype=[(f"t_{lb.px}", "f8") for lb in labels])
    for name, lb in zip(names, labels, strict=True):
        jets[f"t_{lb.px}"] = probs[name]
    fracs = {lb.frac_str: float(fractions.get(lb.frac_str, 0.0)) for lb in labels}
    container = LabelContainer.from_list(labels)
    return get_discriminant(jets, "t", container[signal], container, fracs, epsilon=EPSILON)


def rejection(
    disc_signal: np.ndarray,
    disc_background: np.ndarray,
    efficiencies: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Background rejection at the given signal efficiencies.

    Parameters
    ----------
    disc_signal
        ``(S,)`` discriminant of signal jets.
    disc_background
        ``(K,)`` discriminant of background jets.
    efficiencies
        ``(W,)`` signal efficiencies in (0, 1).

    Returns
    -------
    np.ndarray
        ``(W,)`` rejections; ``nan`` when there are no signal or no background jets,
        ``inf`` when no background jet passes a cut.
    """
    effs = np.asarray(efficiencies, dtype=float)
    if len(disc_signal) == 0 or len(disc_background) == 0:
        return np.full(effs.shape, np.nan)
    rej = calculate_rejection(
        np.asarray(disc_signal, dtype=float), np.asarray(disc_background, dtype=float), effs
    )
    return np.asarray(rej, dtype=float).reshape(effs.shape)


def rejection_table(
    probs: Mapping[str, np.ndarray],
    truth: np.ndarray,
    signal: str,
    fractions: Mapping[str, float],
    working_points: Sequence[float] = DEFAULT_WORKING_POINTS,
) -> dict[str, dict[str, float]]:
    """Rejections of every other class at each working point of ``signal`` tagging.

    Parameters
    ----------
    probs
        Class name -> ``(J,)`` probability.
    truth
        ``(J,)`` truth class names (``str`` array); jets of classes missing from
        ``probs`` are ignored.
    signal
        Signal class (``bjets`` or ``cjets``).
    fractions
        Discriminant background weights (see :func:`fractions_for`).
    working_points
        Signal efficiencies.

    Returns
    -------
    dict[str, dict[str, float]]
        ``{background class: {"<eff in %>": rejection}}``, e.g. ``{"ujets": {"77": 412.0}}``.
    """
    disc = discriminant(probs, signal, fractions)
    sig = disc[truth == signal]
    out: dict[str, dict[str, float]] = {}
    for name in probs:
        if name == signal:
            continue
        rej = rejection(sig, disc[truth == name], working_points)
        out[name] = {wp_key(wp): float(r) for wp, r in zip(working_points, rej, strict=True)}
    return out


def roc_curve(
    disc_signal: np.ndarray, disc_background: np.ndarray, num: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Rejection versus signal efficiency on a grid.

    Parameters
    ----------
    disc_signal, disc_background
        ``(S,)`` and ``(K,)`` discriminants.
    num
        Number of efficiency points between 0.4 and 0.99.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(num,)`` efficiencies and ``(num,)`` rejections.
    """
    effs = np.linspace(0.4, 0.99, num)
    return effs, rejection(disc_signal, disc_background, effs)


def wp_key(efficiency: float) -> str:
    """Key of a working point in the metrics: ``0.77`` -> ``"77"``."""
    return f"{round(100 * efficiency):d}"


def accuracy_counts(probs: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """Correct and total counts of argmax predictions on valid constituents.

    Parameters
    ----------
    probs
        ``(B, N, C)`` class probabilities (or logits).
    truth
        ``(B, N)`` integer truth class.
    valid
        ``(B, N)`` bool, True = a real constituent.

    Returns
    -------
    tuple[int, int]
        ``(correct, total)``.
    """
    pred = probs.argmax(-1)
    return int(((pred == truth) & valid).sum()), int(valid.sum())


def pair_counts(
    pred_index: np.ndarray, true_index: np.ndarray, valid: np.ndarray
) -> tuple[int, int, int]:
    """Confusion counts of "same vertex" over ordered pairs of distinct valid tracks.

    A pair ``(i, j)``, ``i != j``, both valid, is predicted positive when the predicted
    vertex indices agree, and truly positive when the truth vertex indices agree and are
    ``>= 0`` (negative truth indices mean "no vertex").

    Parameters
    ----------
    pred_index
        ``(B, N)`` predicted vertex index.
    true_index
        ``(B, N)`` truth vertex index.
    valid
        ``(B, N)`` bool, True = a real track.

    Returns
    -------
    tuple[int, int, int]
        ``(true positives, false positives, false negatives)``.
    """
    # every group of k tracks of one jet that share a key holds k (k - 1) ordered pairs
    valid = np.asarray(valid, dtype=bool)
    jet = np.broadcast_to(np.arange(valid.shape[0])[:, None], valid.shape)[valid]
    pred, true = pred_index[valid], true_index[valid]
    has_vertex = true >= 0
    predicted = _ordered_pairs(jet, pred)
    tp = _ordered_pairs(jet[has_vertex], pred[has_vertex], true[has_vertex])
    positive = _ordered_pairs(jet[has_vertex], true[has_vertex])
    return tp, predicted - tp, positive - tp


def _ordered_pairs(*keys: np.ndarray) -> int:
    """Number of ordered pairs ``(i, j)``, ``i != j``, that agree on all ``keys`` (1-D)."""
    if not len(keys[0]):
        return 0
    order = np.lexsort(keys)
    start = np.zeros(len(order), dtype=bool)
    start[0] = True
    for k in keys:
        k = k[order]
        start[1:] |= k[1:] != k[:-1]
    sizes = np.diff(np.append(np.flatnonzero(start), len(order)))
    return int((sizes * (sizes - 1)).sum())


def precision_recall(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """``(precision, recall)`` from confusion counts; ``nan`` where undefined."""
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return precision, recall
