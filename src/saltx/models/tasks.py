"""Task heads: jet/constituent classification and regression (Salt §2.12).

A task maps its input representation to predictions and, given labels, to a scalar loss
already multiplied by the task weight. Global-object tasks see the pooled representation
``(B, P)``; constituent tasks see the encoder output ``(B, N, D)`` with the pooled
representation as context. The vertexing task lives in :mod:`saltx.models.vertexing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saltx.models.dense import Dense
from saltx.models.eager import is_eager

# default class names of well-known integer labels (Salt's CLASS_NAMES)
CLASS_NAMES: dict[str, list[str]] = {
    "ftagTruthOriginLabel": [
        "Pileup",
        "Fake",
        "Primary",
        "FromB",
        "FromBC",
        "FromC",
        "FromTau",
        "OtherSecondary",
    ],
    "ftagTruthTypeLabel": ["NoTruth", "Other", "Pion", "Kaon", "Electron", "Muon"],
}

IGNORE_INDEX = -1


def _task_preds(preds: Tensor | Mapping[str, Tensor], name: str) -> Tensor:
    """Accept either the task's own prediction tensor or the whole ``preds`` dict."""
    if isinstance(preds, Mapping):
        if name not in preds:
            raise KeyError(f"preds has no entry for task {name!r}; it has {list(preds)}")
        return preds[name]
    return preds


def _batch_part(batch: Any, part: str) -> Mapping:
    """``batch.masks`` / ``batch.labels`` of a Batch, or the same keys of a plain dict."""
    if batch is None:
        return {}
    if isinstance(batch, Mapping):
        return batch.get(part, {}) or {}
    return getattr(batch, part, {}) or {}


def _field(labels: Mapping[str, Tensor] | None, field: str, task: str, input_name: str) -> Tensor:
    """``labels[field]`` with an error naming the task when the field was not loaded."""
    if labels is None or field not in labels:
        have = list(labels) if labels is not None else []
        raise KeyError(
            f"task {task!r} needs label field {field!r} of input {input_name!r}, but the batch "
            f"only has {have}; check required_labels() / data.labels"
        )
    return labels[field]


class TaskBase(nn.Module):
    """Common task attributes and the head network.

    Parameters
    ----------
    name
        Task name (key in ``preds``/``losses``).
    input_name
        Input the task predicts for (``jets``, ``tracks``, ...).
    input_size
        Size of the representation the head sees (derived by the builder).
    output_size
        Number of outputs.
    context_size
        Size of the prepended context (the pooled representation for constituent tasks).
    weight
        Multiplies the loss.
    hidden_layers, activation, norm_layer, dropout, hidden_dim_scale
        Passed to :class:`~saltx.models.dense.Dense`.
    """

    kind: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        input_name: str,
        input_size: int,
        output_size: int,
        context_size: int = 0,
        weight: float = 1.0,
        hidden_layers: Sequence[int] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        norm_layer: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.input_name = input_name
        self.weight = float(weight)
        self.net = Dense(
            input_size=input_size,
            output_size=output_size,
            hidden_layers=list(hidden_layers) if hidden_layers is not None else None,
            hidden_dim_scale=hidden_dim_scale,
            activation=activation,
            norm_layer=norm_layer,
            dropout=dropout,
            context_size=context_size,
        )

    def labels_needed(self, stage: str = "fit") -> list[str]:
        """Label fields of ``input_name`` this task reads at ``stage``."""
        return []

    def head(self, x: Tensor, mask: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """The head network on ``x``; constituent inputs run on their valid slots only.

        In eager mode a ``(B, N, D)`` input with a mask goes through
        :meth:`~saltx.models.dense.Dense.forward_packed` (padded slots get zeros);
        while tracing, exporting or compiling every slot is computed (static shapes).
        """
        if mask is not None and x.dim() == 3 and is_eager():
            return self.net.forward_packed(x, mask, context)
        return self.net(x, context)

    def pad_preds(self, preds: Tensor, length: int) -> Tensor:
        """Zero-pad constituent predictions ``(B, L, ...)`` to ``(B, length, ...)``.

        Used after the model trimmed the batch to its ``L`` leading slots (the appended
        slots are padded constituents).
        """
        extra = length - preds.shape[1]
        if extra <= 0:
            return preds
        return F.pad(preds, [0, 0] * (preds.dim() - 2) + [0, extra])


PAD_LABELS = (-1, -2)
"""Label values of padded or invalid entries: a ``label_map`` need not list them."""


def remap_labels(
    labels: Tensor,
    label_map: Mapping[int, int],
    ignore: Tensor | None = None,
    what: str = "labels",
    where: str = "label_map",
) -> Tensor:
    """Apply ``{raw: class}`` in one vectorised lookup (chained maps such as swaps work).

    Every value must be in the map, except the padding values :data:`PAD_LABELS` (kept
    as they are unless mapped) and entries flagged in ``ignore``. The input tensor is not
    modified.

    Parameters
    ----------
    labels
        Integer labels of any shape, e.g. ``(B,)`` or ``(B, N)``.
    label_map
        ``{raw_value: class_index}``.
    ignore
        Bool, shape of ``labels``: entries whose value does not matter (padded
        constituents); None = none.
    what, where
        The labels and the map (its config key), as the error message names them.

    Returns
    -------
    Tensor
        Remapped labels, same shape and dtype.

    Raises
    ------
    ValueError
        If a value that is not ignored is neither in ``label_map`` nor a padding value;
        the message names ``what``, the values, ``where`` and the map.
    """
    keys = torch.tensor(list(label_map.keys()), dtype=labels.dtype, device=labels.device)
    vals = torch.tensor(list(label_map.values()), dtype=labels.dtype, device=labels.device)
    match = labels[..., None] == keys  # (..., M)
    found = match.any(-1)
    missing = ~found & (labels != PAD_LABELS[0]) & (labels != PAD_LABELS[1])
    if ignore is not None:
        missing = missing & ~ignore
    if missing.any():
        values = torch.unique(labels[missing]).tolist()[:10]
        raise ValueError(
            f"{what} has values {values} that are not in {where} {dict(label_map)}; add "
            f"them to the map (padding values {list(PAD_LABELS)} need not be listed)"
        )
    mapped = (match.to(labels.dtype) * vals).sum(-1)
    return torch.where(found, mapped, labels)


class ClassificationTask(TaskBase):
    """Multi-class classification of the global object ``(B, C)`` or constituents ``(B, N, C)``.

    The loss is cross-entropy; with class weights it is the weighted mean
    ``Σ w_y l / Σ w_y`` over non-ignored entries (as torch's mean reduction). Padded
    constituents and constituent labels equal to -2 are ignored (set to -1).

    Parameters
    ----------
    label
        Integer label field of ``input_name``.
    class_names
        Names of the classes, in class-index order; their number sets the output size.
    label_map
        ``{raw_value: class_index}`` applied before the loss (requires ``class_names``);
        every label value of a valid entry must be listed, except the padding values
        -1 and -2.
    class_weights
        Per-class loss weights (the builder fills them from the class dict when
        ``use_class_dict`` is set).
    sample_weight
        Float field of ``input_name`` weighting each entry's loss; the loss is then
        ``Σ l_i s_i / n_valid``.
    output_size
        Optional; must equal ``len(class_names)`` if given.
    """

    kind: ClassVar[str] = "classification"

    def __init__(
        self,
        name: str,
        input_name: str,
        input_size: int,
        label: str,
        class_names: Sequence[str] | None = None,
        label_map: Mapping[int, int] | None = None,
        class_weights: Sequence[float] | None = None,
        sample_weight: str | None = None,
        output_size: int | None = None,
        context_size: int = 0,
        weight: float = 1.0,
        hidden_layers: Sequence[int] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        norm_layer: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        if label_map is not None and class_names is None:
            raise ValueError(
                f"task {name!r}: label_map requires class_names (the names of the mapped classes)"
            )
        if class_names is None:
            class_names = CLASS_NAMES.get(label)
        if class_names is None:
            raise ValueError(
                f"task {name!r}: no class_names for label {label!r}; set "
                f"model.tasks.{name}.class_names (known defaults: {sorted(CLASS_NAMES)})"
            )
        class_names = [str(c) for c in class_names]
        if not class_names:
            raise ValueError(f"task {name!r}: model.tasks.{name}.class_names is empty")
        if output_size is not None and int(output_size) != len(class_names):
            raise ValueError(
                f"task {name!r}: output_size={output_size} but {len(class_names)} class_names "
                f"were given ({class_names})"
            )
        if class_weights is not None and len(class_weights) != len(class_names):
            raise ValueError(
                f"task {name!r}: {len(class_weights)} class weights for {len(class_names)} "
                f"classes {class_names}"
            )
        if label_map is not None:
            label_map = {int(k): int(v) for k, v in dict(label_map).items()}
            if not label_map:
                raise ValueError(f"task {name!r}: model.tasks.{name}.label_map is empty")
            bad = {k: v for k, v in label_map.items() if not 0 <= v < len(class_names)}
            if bad:
                raise ValueError(
                    f"task {name!r}: label_map targets {bad} are outside [0, {len(class_names)}) "
                    f"for class_names {class_names}"
                )
        super().__init__(
            name,
            input_name,
            input_size,
            len(class_names),
            context_size=context_size,
            weight=weight,
            hidden_layers=hidden_layers,
            hidden_dim_scale=hidden_dim_scale,
            activation=activation,
            norm_layer=norm_layer,
            dropout=dropout,
        )
        self.label = label
        self.class_names = class_names
        self.label_map = label_map
        self.sample_weight = sample_weight
        cw = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        # loss settings from the config, not learned: kept out of the state dict
        self.register_buffer("class_weights", cw, persistent=False)

    def labels_needed(self, stage: str = "fit") -> list[str]:
        """The label field, plus the sample-weight field when set (at fit only)."""
        if not stage_has_labels(stage):
            return []
        return [self.label] + ([self.sample_weight] if self.sample_weight else [])

    def class_targets(self, labels: Mapping[str, Tensor], mask: Tensor | None) -> Tensor:
        """Class-index targets with ``-1`` for ignored entries (label_map applied).

        Parameters
        ----------
        labels
            Label fields of ``input_name``.
        mask
            ``(B, N)`` bool, True = padded, for constituent tasks.
        """
        raw = _field(labels, self.label, self.name, self.input_name)
        if raw.is_floating_point() and not torch.equal(raw, raw.round()):
            raise ValueError(
                f"task {self.name!r}: label '{self.label}' of '{self.input_name}' has "
                "non-integer values; class labels must be whole numbers"
            )
        y = raw.long()
        if self.label_map is not None:
            what = f"task {self.name!r}: label '{self.label}' of '{self.input_name}'"
            where = f"model.tasks.{self.name}.label_map"
            y = remap_labels(y, self.label_map, mask, what, where)
        if mask is not None:
            y = torch.where(mask | (y == -2), torch.full_like(y, IGNORE_INDEX), y)
        bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= len(self.class_names)))
        if bad.any():
            values = torch.unique(y[bad]).tolist()[:10]
            raise ValueError(
                f"task {self.name!r}: label '{self.label}' of '{self.input_name}' has values "
                f"{values} outside [0, {len(self.class_names)}) for class_names "
                f"{self.class_names}; fix the file, the class names or model.tasks."
                f"{self.name}.label_map"
            )
        return y

    def loss(
        self, preds: Tensor, labels: Mapping[str, Tensor], mask: Tensor | None = None
    ) -> Tensor:
        """Weighted cross-entropy of ``preds`` ``(B, C)`` / ``(B, N, C)``, times ``weight``."""
        y = self.class_targets(labels, mask)
        logits = preds.float().reshape(-1, preds.shape[-1])
        y = y.reshape(-1)
        per = F.cross_entropy(
            logits, y, weight=self.class_weights, ignore_index=IGNORE_INDEX, reduction="none"
        )
        valid = y != IGNORE_INDEX
        if self.sample_weight is not None:
            sw = _field(labels, self.sample_weight, self.name, self.input_name).float()
            loss = (per * sw.reshape(-1)).sum() / valid.sum().clamp_min(1)
        elif self.class_weights is not None:
            w = self.class_weights[y.clamp_min(0)] * valid
            loss = per.sum() / w.sum().clamp_min(1e-12)
        else:
            loss = per.sum() / valid.sum().clamp_min(1)
        return loss * self.weight

    def forward(
        self,
        x: Tensor,
        labels: Mapping[str, Tensor] | None = None,
        mask: Tensor | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits and (with labels) the weighted loss.

        Parameters
        ----------
        x
            ``(B, P)`` pooled representation or ``(B, N, D)`` constituent embeddings.
        labels
            Label fields of ``input_name``, or None.
        mask
            ``(B, N)`` bool, True = padded, for constituent tasks.
        context
            ``(B, C)`` context for constituent tasks.

        Returns
        -------
        tuple
            logits ``(B, C)`` or ``(B, N, C)``, and the loss (None without labels).
        """
        preds = self.head(x, mask, context)
        loss = None if labels is None else self.loss(preds, labels, mask)
        return preds, loss

    def predict(self, preds: Tensor | Mapping[str, Tensor], batch: Any = None) -> dict[str, Tensor]:
        """Softmax probabilities; padded constituent rows are 0.

        Returns
        -------
        dict
            ``{"probs": (B, C) or (B, N, C)}``.
        """
        logits = _task_preds(preds, self.name)
        probs = torch.softmax(logits.float(), dim=-1)
        if logits.dim() == 3:
            mask = _batch_part(batch, "masks").get(self.input_name)
            if mask is not None:
                probs = probs.masked_fill(mask[..., None], 0.0)
        return {"probs": probs}


class RegressionTask(TaskBase):
    """Regression of one or more float targets, trained in scaled units.

    Targets are divided by ``target_denominators`` (label fields; ratio targets) or
    standardised with ``norm_params`` ``{mean, std}``. Non-finite targets are excluded
    from the loss: the loss is the mean over finite targets only (Salt zero-fills them,
    which biases the mean).

    Parameters
    ----------
    targets
        Target field name(s) of ``input_name``.
    target_denominators
        Field names dividing each target (same length as ``targets``).
    norm_params
        ``{"mean": x | [..], "std": x | [..]}`` standardising the targets.
    loss
        Name of a ``torch.nn`` loss class taking ``reduction="none"`` (``MSELoss``,
        ``L1Loss``, ``SmoothL1Loss``, ``HuberLoss``).
    """

    kind: ClassVar[str] = "regression"

    def __init__(
        self,
        name: str,
        input_name: str,
        input_size: int,
        targets: str | Sequence[str],
        target_denominators: str | Sequence[str] | None = None,
        norm_params: Mapping[str, Any] | None = None,
        loss: str = "MSELoss",
        output_size: int | None = None,
        context_size: int = 0,
        weight: float = 1.0,
        hidden_layers: Sequence[int] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        norm_layer: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        targets = [targets] if isinstance(targets, str) else [str(t) for t in targets]
        if isinstance(target_denominators, str):
            target_denominators = [target_denominators]
        if target_denominators is not None and norm_params is not None:
            raise ValueError(
                f"task {name!r}: target_denominators and norm_params are mutually exclusive"
            )
        if target_denominators is not None and len(target_denominators) != len(targets):
            raise ValueError(
                f"task {name!r}: {len(target_denominators)} target_denominators for "
                f"{len(targets)} targets {targets}"
            )
        if output_size is not None and int(output_size) != len(targets):
            raise ValueError(
                f"task {name!r}: output_size={output_size} but {len(targets)} targets {targets}"
            )
        super().__init__(
            name,
            input_name,
            input_size,
            len(targets),
            context_size=context_size,
            weight=weight,
            hidden_layers=hidden_layers,
            hidden_dim_scale=hidden_dim_scale,
            activation=activation,
            norm_layer=norm_layer,
            dropout=dropout,
        )
        self.targets = targets
        self.target_denominators = (
            None if target_denominators is None else [str(d) for d in target_denominators]
        )
        mean = std = None
        if norm_params is not None:
            if "mean" not in norm_params or "std" not in norm_params:
                raise ValueError(f"task {name!r}: norm_params needs 'mean' and 'std' keys")
            mean = self._per_target(norm_params["mean"], "mean")
            std = self._per_target(norm_params["std"], "std")
            if torch.any(std == 0) or not torch.isfinite(torch.cat([mean, std])).all():
                raise ValueError(f"task {name!r}: norm_params must be finite with std != 0")
        self.register_buffer("target_mean", mean, persistent=False)
        self.register_buffer("target_std", std, persistent=False)
        loss_cls = getattr(nn, str(loss), None)
        if not isinstance(loss_cls, type) or not issubclass(loss_cls, nn.Module):
            raise ValueError(f"task {name!r}: unknown loss {loss!r}; expected a torch.nn class")
        self.loss_fn = loss_cls(reduction="none")

    def _per_target(self, value: Any, what: str) -> Tensor:
        values = [float(value)] * len(self.targets) if isinstance(value, int | float) else value
        values = [float(v) for v in values]
        if len(values) != len(self.targets):
            raise ValueError(
                f"task {self.name!r}: norm_params.{what} has {len(values)} values for "
                f"{len(self.targets)} targets {self.targets}"
            )
        return torch.tensor(values, dtype=torch.float32)

    def labels_needed(self, stage: str = "fit") -> list[str]:
        """Targets at fit; the denominators always (needed to invert the scaling)."""
        fields = list(self.targets) if stage_has_labels(stage) else []
        return fields + list(self.target_denominators or [])

    def _denominators(self, labels: Mapping[str, Tensor]) -> Tensor:
        cols = [_field(labels, d, self.name, self.input_name) for d in self.target_denominators]
        return torch.stack(cols, -1).float()

    def scaled_targets(self, labels: Mapping[str, Tensor]) -> Tensor:
        """``(B, [N,] T)`` targets in the units the network predicts."""
        cols = [_field(labels, t, self.name, self.input_name) for t in self.targets]
        t = torch.stack(cols, -1).float()
        if self.target_denominators is not None:
            t = t / self._denominators(labels)
        elif self.target_mean is not None:
            t = (t - self.target_mean) / self.target_std
        return t

    def loss(
        self, preds: Tensor, labels: Mapping[str, Tensor], mask: Tensor | None = None
    ) -> Tensor:
        """Mean loss over finite (and, for constituents, valid) targets, times ``weight``."""
        t = self.scaled_targets(labels)
        keep = torch.isfinite(t)
        if mask is not None:
            keep = keep & ~mask[..., None]
        t = torch.where(keep, t, torch.zeros_like(t))  # no NaN reaches the gradient
        per = self.loss_fn(preds.float(), t)
        loss = torch.where(keep, per, torch.zeros_like(per)).sum() / keep.sum().clamp_min(1)
        return loss * self.weight

    def forward(
        self,
        x: Tensor,
        labels: Mapping[str, Tensor] | None = None,
        mask: Tensor | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Scaled predictions ``(B, T)`` (or ``(B, N, T)``) and (with labels) the loss."""
        preds = self.head(x, mask, context)
        loss = None if labels is None else self.loss(preds, labels, mask)
        return preds, loss

    def predict(self, preds: Tensor | Mapping[str, Tensor], batch: Any = None) -> dict[str, Tensor]:
        """Predictions in physical units: ``{"values": (B, T)}`` (scaling inverted)."""
        values = _task_preds(preds, self.name).float()
        if self.target_denominators is not None:
            labels = _batch_part(batch, "labels").get(self.input_name)
            values = values * self._denominators(labels)
        elif self.target_mean is not None:
            values = values * self.target_std + self.target_mean
        return {"values": values}


def stage_has_labels(stage: str) -> bool:
    """Whether truth labels are loaded at ``stage`` (fit/train/val: yes; test/predict: no)."""
    return stage in ("fit", "train", "val", "validate")
