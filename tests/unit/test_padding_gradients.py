"""Padding skipping changes no gradient: the trimmed, length-grouped, packed path of
SaltModel (eager mode) against the plain padded path, for one batch, to float precision."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from saltx.models import tasks, vertexing
from saltx.models.padding_skip import model_length_groups

sys.path.insert(0, str(Path(__file__).parent))
from test_saltmodel import build, make_batch, small_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def losses_and_grads(model, batch, plain: bool, monkeypatch) -> tuple[dict, dict]:
    """Per-task losses and all parameter gradients of one training step."""
    with monkeypatch.context() as m:
        if plain:  # every slot through every head, dense pair logits, no trimming
            m.setattr(model, "trim_padding", False)
            m.setattr(model, "group_by_length", False)
            m.setattr(tasks, "is_eager", lambda: False)
            m.setattr(vertexing, "is_eager", lambda: False)
        model.zero_grad(set_to_none=True)
        _, losses = model(batch.inputs, batch.masks, batch.labels)
        torch.stack(list(losses.values())).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("salt013", [False, True], ids=["gn2", "gn2_salt013"])
def test_padding_skipping_gives_the_plain_gradients(salt013, monkeypatch):
    cfg = small_cfg(norm_affine=not salt013)
    if salt013:
        cfg.model.encoder.num_registers = 1
        cfg.model.encoder.final_norm = "after_out_proj"
    model = build(cfg).train()
    # 96 jets of 0 to 11 valid tracks in 16 slots: trimmed to 16 -> 12, three length groups
    n_tracks = tuple(int(i) for i in torch.arange(96) % 12)
    batch = make_batch(n_tracks=n_tracks, pad_to=16, seed=3)
    assert len(model_length_groups(model, batch.masks)) > 1

    fast_losses, fast = losses_and_grads(model, batch, plain=False, monkeypatch=monkeypatch)
    plain_losses, plain = losses_and_grads(model, batch, plain=True, monkeypatch=monkeypatch)

    assert set(fast_losses) == {"jet_classification", "track_origin", "track_vertexing"}
    for key in fast_losses:
        torch.testing.assert_close(fast_losses[key], plain_losses[key], rtol=1e-6, atol=1e-7)
    assert set(fast) == set(plain)
    # a few gradients are zero in exact arithmetic (the key bias and the pooling gate's
    # bias: softmax is shift invariant) and hold rounding noise only: the absolute
    # tolerance has a floor relative to the largest gradient of the model
    largest = max(g.abs().max().item() for g in plain.values())
    for name in fast:
        atol = 1e-6 * plain[name].abs().max().item() + 1e-8 * largest
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=atol, msg=name)
