"""What a sweep leaves behind: ``optimization_results.yaml``, a printed table and plots."""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def redact_url(url: str | None) -> str | None:
    """A storage URL with its password replaced by ``***`` (None stays None)."""
    if url is None or "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _plain(value: Any) -> Any:
    """Numbers and strings as YAML writes them plainly (numpy scalars -> Python)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _trial_entry(trial: FrozenTrial) -> dict[str, Any]:
    values = [_plain(v) for v in trial.values] if trial.values is not None else None
    return {
        "number": trial.number,
        "values": values,
        "params": {k: _plain(v) for k, v in trial.params.items()},
    }


def summarize(
    study: optuna.Study,
    *,
    storage_url: str | None,
    worker_trials: Sequence[int] = (),
    worker_failures: int = 0,
) -> dict[str, Any]:
    """Summarise a study for ``optimization_results.yaml``.

    Single objective: ``best_params``, ``best_value`` and ``best_trial``. Several
    objectives: ``pareto_front`` (``number``, ``values``, ``params`` per trial). Both list
    the trial counts per state and the trials this worker ran.
    """
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    out: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "storage": redact_url(storage_url),
        "directions": [d.name.lower() for d in study.directions],
        "n_trials_in_study": len(trials),
        "states": dict(sorted(counts.items())),
        "worker": {"trials": sorted(int(n) for n in worker_trials), "failures": worker_failures},
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(study.directions) == 1:
        if complete:
            best = study.best_trial
            out["best_trial"] = best.number
            out["best_value"] = _plain(best.value)
            out["best_params"] = {k: _plain(v) for k, v in best.params.items()}
        else:
            out["best_trial"] = out["best_value"] = out["best_params"] = None
    else:
        out["pareto_front"] = [_trial_entry(t) for t in study.best_trials] if complete else []
    return out


def write_results(summary: dict[str, Any], sweep_dir: str | Path) -> Path:
    """Write the summary to ``<sweep_dir>/optimization_results.yaml``."""
    path = Path(sweep_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(summary, f, sort_keys=False)
    return path


def format_table(study: optuna.Study, max_rows: int = 50) -> str:
    """A plain-text table of the study's trials (number, state, values, params).

    Shows the best ``max_rows`` finished trials first (single objective) or the most
    recent ones (several objectives).
    """
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    if len(study.directions) == 1:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0

        def key(t: FrozenTrial) -> tuple[int, float, int]:
            if t.state == TrialState.COMPLETE and t.value is not None:
                return (0, sign * t.value, t.number)
            return (1, 0.0, t.number)

        trials = sorted(trials, key=key)
    else:
        trials = sorted(trials, key=lambda t: -t.number)
    header = ["#", "state", "value", *names]
    rows = [header]
    for t in trials[:max_rows]:
        vals = "-" if t.values is None else ", ".join(f"{v:.6g}" for v in t.values)
        rows.append([str(t.number), t.state.name, vals, *(_cell(t.params.get(n)) for n in names)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(trials) > max_rows:
        lines.append(f"... {len(trials) - max_rows} more trials")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def save_plots(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """Save optimisation-history and parameter-importance plots; return the written files.

    Plotly (``.html``) is used where installed, matplotlib (``.png``) otherwise. Plots
    that cannot be made (no complete trial; importances need two complete trials with
    varied parameters) are skipped with a log line, never an error.
    """
    out_dir = Path(out_dir)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        log.info("no complete trial: no optimisation plots")
        return []
    multi = len(study.directions) > 1
    plots: list[tuple[str, str, dict[str, Any]]] = []
    if multi:
        if len(study.directions) in (2, 3):
            plots.append(("pareto_front", "plot_pareto_front", {}))
        target = {"target": lambda t: t.values[0], "target_name": "objective 0"}
    else:
        target = {}
    plots.append(("optimization_history", "plot_optimization_history", dict(target)))
    if len(complete) >= 2 and any(t.params for t in complete):
        plots.append(("param_importances", "plot_param_importances", dict(target)))
    else:
        log.info("parameter importances need two complete trials with parameters: skipped")
    written: list[Path] = []
    for stem, fn_name, kwargs in plots:
        path = _save_one(study, out_dir, stem, fn_name, kwargs)
        if path is not None:
            written.append(path)
    return written


def _save_one(
    study: optuna.Study, out_dir: Path, stem: str, fn_name: str, kwargs: dict[str, Any]
) -> Path | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _draw(study, out_dir, stem, fn_name, kwargs)
    except Exception as e:  # a plot is never worth failing a finished sweep for
        log.warning("could not make the %s plot: %s", stem, e)
        return None


def _draw(
    study: optuna.Study, out_dir: Path, stem: str, fn_name: str, kwargs: dict[str, Any]
) -> Path | None:
    if optuna.visualization.is_available():
        fig = getattr(optuna.visualization, fn_name)(study, **kwargs)
        path = out_dir / f"{stem}.html"
        fig.write_html(str(path))
        return path
    if not optuna.visualization.matplotlib.is_available():
        log.info("neither plotly nor matplotlib available: no %s plot", stem)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = getattr(optuna.visualization.matplotlib, fn_name)(study, **kwargs)
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    path = out_dir / f"{stem}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
