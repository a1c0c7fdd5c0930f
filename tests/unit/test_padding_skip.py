"""Padding skipping (saltx.models.padding_skip): same outputs as the plain model, to the bit."""

from __future__ import annotations

import pytest
import torch
from test_saltmodel import JET_VARS, TRACK_VARS, build, make_batch, small_cfg

from saltx.data.batch import Batch
from saltx.models import padding_skip
from saltx.models.padding_skip import length_groups, trim_batch, trim_lengths
from saltx.models.vertexing import INVALID_PAIR_LOGIT, VertexingTask, valid_pairs


def test_trim_lengths_round_up_and_skip_full_inputs():
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[0, :3] = False
    mask[2, :11] = False
    assert trim_lengths({"tracks": mask}) == {"tracks": 16}
    assert trim_lengths({"tracks": mask}, multiple=4) == {"tracks": 12}
    # a slot valid in any jet is kept, even after a padded slot
    mask[1, 30] = False
    assert trim_lengths({"tracks": mask}) == {"tracks": 32}
    assert trim_lengths({"tracks": torch.zeros(2, 5, dtype=torch.bool)}) == {}
    assert trim_lengths({"tracks": torch.ones(2, 20, dtype=torch.bool)}) == {"tracks": 8}


def test_trim_batch_cuts_constituent_tensors_only():
    batch = make_batch(n_tracks=(3, 0, 5), pad_to=20)
    edge = torch.rand(3, 20, 4)
    inputs = dict(batch.inputs, EDGE=edge)
    lengths = trim_lengths(batch.masks)
    new_inputs, new_masks, new_labels = trim_batch(
        inputs, batch.masks, batch.labels, lengths, edge_input="tracks"
    )
    assert new_inputs["tracks"].shape == (3, 8, len(TRACK_VARS))
    assert new_inputs["EDGE"].shape == (3, 8, 4)
    assert new_inputs["jets"] is batch.inputs["jets"]
    assert new_masks["tracks"].shape == (3, 8)
    assert new_labels["tracks"]["ftagTruthVertexIndex"].shape == (3, 8)
    assert new_labels["jets"]["flavour_label"].shape == (3,)


def _outputs_equal(p1, p2, mask):
    assert p1.keys() == p2.keys()
    for k in p1:
        assert p1[k].shape == p2[k].shape, k
    assert torch.equal(p1["jet_classification"], p2["jet_classification"])
    valid = ~mask
    assert torch.equal(p1["track_origin"][valid], p2["track_origin"][valid])
    pairs = valid_pairs(mask)
    assert torch.equal(p1["track_vertexing"][pairs], p2["track_vertexing"][pairs])
    assert torch.all(p1["track_vertexing"][~pairs] == INVALID_PAIR_LOGIT)
    assert torch.all(p2["track_vertexing"][~pairs] == INVALID_PAIR_LOGIT)


def test_length_groups_partition_the_batch():
    n_valid = torch.tensor([3, 0, 12, 5, 17, 9, 8])
    mask = torch.arange(24)[None] >= n_valid[:, None]
    groups = length_groups(mask, multiple=8, min_jets=1)
    assert [(idx.tolist(), length) for idx, length in groups] == [
        ([0, 1, 3, 6], 8),
        ([2, 5], 16),
        ([4], 24),
    ]
    merged = length_groups(mask, multiple=8, min_jets=5)
    assert [(idx.tolist(), length) for idx, length in merged] == [
        ([0, 1, 2, 3, 4, 5, 6], 24),  # the one-jet last bucket joins the group before it
    ]
    last_two = length_groups(mask[[0, 1, 2, 3, 4, 5, 6, 4]], multiple=8, min_jets=5)
    assert [(idx.tolist(), length) for idx, length in last_two] == [
        ([0, 1, 2, 3, 5, 6], 16),
        ([4, 7], 24),
    ]
    assert length_groups(mask, multiple=8, min_jets=100)[0][0].tolist() == list(range(7))
    fine = length_groups(mask, multiple=2, min_jets=1)
    assert [length for _, length in fine] == [2, 4, 6, 8, 10, 12, 18]


@pytest.mark.parametrize("min_jets", [1, 128])  # grouped by length, or one trimmed batch
@pytest.mark.parametrize(("encoder", "pooling"), [("transformer", "global"), ("cross", "cross")])
def test_trimmed_model_equals_untrimmed(encoder, pooling, min_jets, monkeypatch):
    monkeypatch.setattr(padding_skip, "GROUP_MIN_JETS", min_jets)
    monkeypatch.setattr(padding_skip, "GROUP_MULTIPLE", 8)
    model = build(small_cfg({"jets": JET_VARS, "tracks": TRACK_VARS}, encoder, pooling))
    # >= 4 jets per group: BLAS gives a row the same bits only above a few rows per thread
    n_tracks = (3, 0, 5, 7, 12, 2, 9, 4, 10, 13, 11, 15)
    batch = make_batch(n_tracks=n_tracks, pad_to=24, seed=1)
    assert trim_lengths(batch.masks) == {"tracks": 16}
    assert len(length_groups(batch.masks["tracks"])) == (2 if min_jets == 1 else 1)
    with torch.no_grad():
        p1, l1 = model(*batch)
        model.trim_padding = model.group_by_length = False
        p2, l2 = model(*batch)
    _outputs_equal(p1, p2, batch.masks["tracks"])
    for k in l1:  # summation order over the longer tensors differs
        torch.testing.assert_close(l1[k], l2[k])
    pred1 = model.tasks["track_vertexing"].predict(p1, batch)["vertex_index"]
    pred2 = model.tasks["track_vertexing"].predict(p2, batch)["vertex_index"]
    assert torch.equal(pred1, pred2)


def test_skip_padding_runs_the_network_per_length_group(monkeypatch):
    """The forward really skips padding: one ``representations`` call per length group,
    each on its own trimmed length, and predictions back at the caller's N slots."""
    monkeypatch.setattr(padding_skip, "GROUP_MIN_JETS", 4)
    model = build(small_cfg({"jets": JET_VARS, "tracks": TRACK_VARS}))
    n_tracks = (1, 2, 1, 2, 5, 6, 5, 6, 3, 4, 4, 3)
    batch = make_batch(n_tracks=n_tracks, pad_to=20, seed=4)
    groups = length_groups(trim_batch(*batch, trim_lengths(batch.masks))[1]["tracks"])
    assert [length for _, length in groups] == [2, 4, 6]
    seen = []
    plain = model.representations

    def spy(inputs, masks):
        seen.append(tuple(masks["tracks"].shape))
        return plain(inputs, masks)

    monkeypatch.setattr(model, "representations", spy)
    with torch.no_grad():
        preds, _ = model(*batch)
    assert seen == [(4, 2), (4, 4), (4, 6)]
    assert preds["track_origin"].shape[:2] == (12, 20)
    assert preds["track_vertexing"].shape == (12, 20, 20)
    seen.clear()
    model.group_by_length = False  # trimmed only: one call on the 8 leading slots
    with torch.no_grad():
        model(*batch)
    assert seen == [(12, 8)]


@pytest.mark.parametrize("min_jets", [1, 128])
def test_trimmed_model_with_edges_and_gradients(min_jets, monkeypatch):
    monkeypatch.setattr(padding_skip, "GROUP_MIN_JETS", min_jets)
    monkeypatch.setattr(padding_skip, "GROUP_MULTIPLE", 8)
    variables = {"jets": JET_VARS, "tracks": TRACK_VARS, "EDGE": ["dR", "z", "isSelfLoop"]}
    edges = {"embed_dim": 4, "hidden_layers": [8], "update_edges": True}
    model = build(small_cfg(variables, edges=edges)).train()
    b = make_batch(n_tracks=(3, 0, 5, 6, 11, 9, 16, 12), pad_to=17, seed=2)
    raw = (torch.rand(8, 17, 4) + 0.1).masked_fill(b.masks["tracks"][..., None], 0)
    batch = Batch(dict(b.inputs, EDGE=raw), b.masks, b.labels)
    grads = []
    outs = []
    for trim in (True, False):
        model.trim_padding = model.group_by_length = trim
        model.zero_grad()
        preds, losses = model(*batch)
        sum(losses.values()).backward()
        outs.append({k: v.detach() for k, v in preds.items()})
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    _outputs_equal(outs[0], outs[1], batch.masks["tracks"])
    assert len(grads[0]) == len(grads[1])
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2)


def test_sparse_pair_logits_equal_dense():
    torch.manual_seed(0)
    task = VertexingTask("vx", "tracks", 2 * 6, context_size=5, hidden_layers=[16, 8])
    x, ctx = torch.randn(3, 7, 6), torch.randn(3, 5)
    mask = torch.arange(7)[None] >= torch.tensor([4, 0, 7])[:, None]
    sparse = task.sparse_pair_logits(x, mask, ctx)
    dense = task.pair_logits(x, ctx).masked_fill(~valid_pairs(mask), INVALID_PAIR_LOGIT)
    torch.testing.assert_close(sparse, dense)
    assert torch.all(sparse[~valid_pairs(mask)] == INVALID_PAIR_LOGIT)
