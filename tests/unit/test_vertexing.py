"""Vertexing task: Salt's pair weights, a finite loss without positives, dense pair logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saltx.data.batch import Batch
from saltx.models.dense import Dense
from saltx.models.vertexing import VertexingTask, pair_weights, vertexing_loss

PILEUP, FAKE, PRIMARY, FROMB, FROMBC, FROMC, FROMTAU, OTHER = range(8)


def test_pair_weights_as_salt():
    origin = torch.tensor([[FROMB, FROMC, FAKE, FAKE, PRIMARY, FROMBC]])
    w = pair_weights(origin)[0]
    assert w[0, 1] == 2  # HF-HF
    assert w[0, 5] == 2  # FromB-FromBC
    assert w[0, 2] == 2  # HF-Fake (1 & -1 = 1)
    assert w[2, 3] == 0  # Fake-Fake (-1 & -1 = -1)
    assert w[0, 4] == 1  # HF-Primary
    assert w[2, 4] == 1  # Fake-Primary
    assert torch.equal(w, w.T)


def naive_loss(logits, vertex, origin, mask):
    def wt(o):
        return 1 if o in (3, 4, 5) else (-1 if o == 1 else 0)

    total, positives = 0.0, 0
    B, N = mask.shape
    for b in range(B):
        for i in range(N):
            for j in range(N):
                if i == j or mask[b, i] or mask[b, j]:
                    continue
                v_i, v_j = int(vertex[b, i]), int(vertex[b, j])
                y = float(v_i == v_j and v_i >= 0 and v_j >= 0)
                positives += int(y)
                bce = F.binary_cross_entropy_with_logits(logits[b, i, j], torch.tensor(y))
                total += bce.item() * (1 + (wt(int(origin[b, i])) & wt(int(origin[b, j]))))
    return total / max(positives, 1)


def test_loss_matches_naive_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 5, generator=gen)
    vertex = torch.tensor([[0, 0, 1, 1, -1], [2, 2, 2, -1, 0], [-1, -1, 0, 3, 3]])
    origin = torch.tensor([[2, 2, 3, 5, 1], [4, 3, 1, 0, 2], [1, 1, 2, 3, 6]])
    mask = torch.tensor([[False] * 5, [False, False, False, True, True], [False] * 4 + [True]])
    got = vertexing_loss(logits, vertex, origin, mask)
    assert got.item() == pytest.approx(naive_loss(logits, vertex, origin, mask), rel=1e-5)


def test_loss_finite_without_positive_pairs():
    task = VertexingTask("vx", "tracks", 8, context_size=3)
    x, ctx = torch.randn(2, 4, 4, requires_grad=True), torch.randn(2, 3)
    labels = {
        "ftagTruthVertexIndex": torch.tensor([[-1, -1, 0, 1], [-1, 2, 3, -1]]),
        "ftagTruthOriginLabel": torch.tensor([[1, 1, 2, 3], [0, 3, 4, 1]]),
    }
    mask = torch.zeros(2, 4, dtype=torch.bool)
    _, loss = task(x, labels, mask=mask, context=ctx)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # all padded: zero loss, no NaN
    _, loss0 = task(x, labels, mask=torch.ones_like(mask), context=ctx)
    assert loss0.item() == 0.0


def test_dense_pair_logits_equal_materialised_head():
    torch.manual_seed(0)
    task = VertexingTask("vx", "tracks", 2 * 6, context_size=5, hidden_layers=[16, 8], weight=1.5)
    ref = Dense(12, 1, hidden_layers=[16, 8], context_size=5)
    assert sum(p.numel() for p in task.parameters()) == sum(p.numel() for p in ref.parameters())
    x, ctx = torch.randn(2, 4, 6), torch.randn(2, 3 + 2)
    mask = torch.tensor([[False, False, False, True], [False] * 4])
    logits, _ = task(x, mask=mask, context=ctx)
    assert logits.shape == (2, 4, 4)
    n = 4
    pairs = torch.cat([x[:, :, None].expand(-1, -1, n, -1), x[:, None].expand(-1, n, -1, -1)], -1)
    full = task.net(pairs, ctx).squeeze(-1)  # Dense([ctx, x_i, x_j])
    valid = ~mask
    adj = valid[:, :, None] & valid[:, None, :] & ~torch.eye(n, dtype=torch.bool)
    torch.testing.assert_close(logits[adj], full[adj])
    assert torch.all(logits[~adj] < -1e3)


def test_training_dropout_falls_back_to_materialised_pairs():
    torch.manual_seed(0)
    task = VertexingTask("vx", "tracks", 8, context_size=2, hidden_layers=[8], dropout=0.5)
    x, ctx = torch.randn(1, 3, 4), torch.randn(1, 2)
    task.train()
    assert task(x, context=ctx)[0].shape == (1, 3, 3)
    task.eval()
    n = 3
    pairs = torch.cat([x[:, :, None].expand(-1, -1, n, -1), x[:, None].expand(-1, n, -1, -1)], -1)
    eye = torch.eye(n, dtype=torch.bool)[None]
    torch.testing.assert_close(
        task(x, context=ctx)[0][~eye], task.net(pairs, ctx).squeeze(-1)[~eye]
    )


def test_predict_vertex_index():
    task = VertexingTask("vx", "tracks", 4)
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, 0, 2] = logits[0, 2, 0] = 5.0
    mask = torch.tensor([[False, False, False, True]])
    out = task.predict({"vx": logits}, Batch({}, {"tracks": mask}, {}))["vertex_index"]
    assert out.tolist() == [[0, 1, 0, -1]]


def test_origin_label_name_and_needed_labels():
    task = VertexingTask("vx", "tracks", 4)
    assert task.origin_label == "ftagTruthOriginLabel"
    assert task.labels_needed("fit") == ["ftagTruthVertexIndex", "ftagTruthOriginLabel"]
    assert task.labels_needed("test") == []
    with pytest.raises(KeyError, match="ftagTruthOriginLabel"):
        task(torch.randn(1, 2, 2), {"ftagTruthVertexIndex": torch.zeros(1, 2, dtype=torch.long)})
