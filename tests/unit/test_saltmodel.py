"""SaltModel end to end on tiny tensors: padding invariance, empty jets, GLOBAL/PARAMETERS."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from saltx.data.batch import Batch
from saltx.models.build import build_model

JET_VARS = ["pt", "eta"]
TRACK_VARS = ["d0", "z0", "qOverP", "nPix"]
EL_VARS = ["pt", "eProb"]
NORM = {
    "jets": {v: {"mean": 1.0, "std": 2.0} for v in [*JET_VARS, "sm_pt", "sm_dR"]},
    "tracks": {v: {"mean": 0.5, "std": 3.0} for v in TRACK_VARS},
    "electrons": {v: {"mean": 0.0, "std": 1.5} for v in EL_VARS},
}
CLASS_NAMES = ["bjets", "cjets", "ujets"]
TASKS = {
    "jet_classification": {
        "_target_": "saltx.models.tasks.ClassificationTask",
        "input_name": "jets",
        "label": "flavour_label",
        "hidden_layers": [8],
    },
    "track_origin": {
        "_target_": "saltx.models.tasks.ClassificationTask",
        "input_name": "tracks",
        "label": "ftagTruthOriginLabel",
        "weight": 0.5,
        "hidden_layers": [8],
    },
    "track_vertexing": {
        "_target_": "saltx.models.vertexing.VertexingTask",
        "input_name": "tracks",
        "weight": 1.5,
        "hidden_layers": [8],
    },
}


def small_cfg(variables=None, encoder="transformer", pooling="global", **model):
    enc = {"_target_": "saltx.models.transformer.TransformerEncoder", "num_layers": 2}
    if encoder == "cross":
        enc = {
            "_target_": "saltx.models.crossattn.TransformerCrossAttentionEncoder",
            "num_layers": 2,
        }
    pool = {"_target_": "saltx.models.pooling.GlobalAttentionPooling"}
    if pooling == "cross":
        pool = {"_target_": "saltx.models.pooling.CrossAttentionPooling", "num_layers": 1}
    variables = variables or {"jets": JET_VARS, "tracks": TRACK_VARS}
    init = {k: {"hidden_layers": [16]} for k in variables if k in ("tracks", "electrons")}
    m = {
        "embed_dim": 16,
        "num_heads": 2,
        "out_dim": 12,
        "dropout": 0.0,
        "activation": "ReLU",
        "init_nets": init,
        "edges": None,
        "attention": {
            "_target_": "saltx.models.attention.ScaledDotProductAttention",
            "_partial_": True,
        },
        "encoder": enc,
        "pooling": pool,
        "tasks": TASKS,
        "muP": False,
    }
    m.update(model)
    data = {"variables": variables, "global_object": "jets", "input_map": None}
    return OmegaConf.create({"name": "GN2", "data": data, "model": m})


def make_batch(n_tracks=(3, 0, 5), pad_to=5, seed=0, electrons=False, extra=None):
    gen = torch.Generator().manual_seed(seed)
    B = len(n_tracks)
    idx = torch.arange(pad_to)
    mask = idx[None, :] >= torch.tensor(n_tracks)[:, None]
    tracks = torch.randn(B, pad_to, len(TRACK_VARS), generator=gen).masked_fill(mask[..., None], 0)
    inputs = {"jets": torch.randn(B, 2, generator=gen), "tracks": tracks}
    masks = {"tracks": mask}
    origin = torch.randint(0, 8, (B, pad_to), generator=gen).masked_fill(mask, -1)
    vertex = torch.randint(-1, 3, (B, pad_to), generator=gen).masked_fill(mask, -1)
    labels = {
        "jets": {"flavour_label": torch.randint(0, 3, (B,), generator=gen)},
        "tracks": {"ftagTruthOriginLabel": origin, "ftagTruthVertexIndex": vertex},
    }
    if electrons:
        emask = torch.tensor([[False, True], [True, True], [False, False]])[:B]
        inputs["electrons"] = torch.randn(B, 2, 2, generator=gen).masked_fill(emask[..., None], 0)
        masks["electrons"] = emask
    for k, v in (extra or {}).items():
        inputs[k] = v
    return Batch(inputs, masks, labels)


def pad(batch: Batch, extra: int) -> Batch:
    """Append ``extra`` padded track slots (zeros, mask True, label -1)."""
    inputs, masks, labels = dict(batch.inputs), dict(batch.masks), dict(batch.labels)
    t = inputs["tracks"]
    inputs["tracks"] = torch.cat([t, torch.zeros(t.shape[0], extra, t.shape[2])], 1)
    masks["tracks"] = torch.cat(
        [masks["tracks"], torch.ones(t.shape[0], extra, dtype=torch.bool)], 1
    )
    labels["tracks"] = {
        k: torch.cat([v, torch.full((v.shape[0], extra), -1, dtype=v.dtype)], 1)
        for k, v in labels["tracks"].items()
    }
    return Batch(inputs, masks, labels)


def build(cfg):
    torch.manual_seed(0)
    return build_model(cfg, NORM, None, CLASS_NAMES).eval()


@pytest.mark.parametrize(("encoder", "pooling"), [("transformer", "global"), ("cross", "cross")])
def test_padding_invariance(encoder, pooling):
    variables = {"jets": JET_VARS, "tracks": TRACK_VARS}
    model = build(small_cfg(variables, encoder=encoder, pooling=pooling))
    batch = make_batch()
    padded = pad(batch, 3)
    with torch.no_grad():
        p1, l1 = model(*batch)
        p2, l2 = model(*padded)
    # predictions of the jets and of the valid tracks are unchanged to the bit
    assert torch.equal(p1["jet_classification"], p2["jet_classification"])
    valid = ~batch.masks["tracks"]
    assert torch.equal(p1["track_origin"][valid], p2["track_origin"][:, :5][valid])
    pairs = valid[:, :, None] & valid[:, None, :]
    assert torch.equal(p1["track_vertexing"][pairs], p2["track_vertexing"][:, :5, :5][pairs])
    # losses agree up to the summation order over the longer (padded) tensors
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k])


def test_zero_track_jets_no_nan():
    model = build(small_cfg()).train()
    batch = make_batch(n_tracks=(0, 0, 2))
    preds, losses = model(*batch)
    for v in preds.values():
        assert torch.isfinite(v).all()
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_all_tracks_padded_batch():
    model = build(small_cfg()).train()
    _, losses = model(*make_batch(n_tracks=(0, 0, 0)))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["track_vertexing"].item() == 0.0


def test_shapes_and_no_labels():
    model = build(small_cfg())
    batch = make_batch()
    preds, losses = model(batch.inputs, batch.masks)
    assert losses == {}
    assert preds["jet_classification"].shape == (3, 3)
    assert preds["track_origin"].shape == (3, 5, 8)
    assert preds["track_vertexing"].shape == (3, 5, 5)
    out = model.tasks["track_vertexing"].predict(preds, batch)["vertex_index"]
    assert out.shape == (3, 5) and out[1].tolist() == [-1] * 5


def test_losses_are_weighted():
    model = build(small_cfg())
    batch = make_batch()
    _, losses = model(*batch)
    task = model.tasks["track_origin"]
    x_enc, global_rep = model.representations(batch.inputs, batch.masks)
    _, raw = task(x_enc["tracks"], batch.labels["tracks"], batch.masks["tracks"], global_rep)
    torch.testing.assert_close(losses["track_origin"], raw)
    task.weight = 1.0
    _, unweighted = task(x_enc["tracks"], batch.labels["tracks"], batch.masks["tracks"], global_rep)
    torch.testing.assert_close(raw, 0.5 * unweighted)


def test_global_and_parameters_and_electrons():
    variables = {
        "jets": JET_VARS,
        "tracks": TRACK_VARS,
        "electrons": EL_VARS,
        "GLOBAL": ["sm_pt", "sm_dR"],
        "PARAMETERS": ["mass_param"],
    }
    model = build(small_cfg(variables))
    assert model.init_nets["tracks"].input_size == 4 + 2 + 1
    assert model.tasks["jet_classification"].net.input_size == 12 + 2
    assert model.tasks["track_origin"].net.context_size == 12 + 2
    extra = {"GLOBAL": torch.randn(3, 2), "PARAMETERS": torch.full((3, 1), 40.0)}
    batch = make_batch(electrons=True, extra=extra)
    p1, _ = model(*batch)
    # the pooled representation depends on GLOBAL and PARAMETERS
    changed = dict(batch.inputs, GLOBAL=batch.inputs["GLOBAL"] + 1.0)
    p2, _ = model(changed, batch.masks)
    assert not torch.allclose(p1["jet_classification"], p2["jet_classification"])
    changed = dict(batch.inputs, PARAMETERS=torch.full((3, 1), 5.0))
    p3, _ = model(changed, batch.masks)
    assert not torch.allclose(p1["track_origin"], p3["track_origin"])


def test_edges_forward():
    variables = {"jets": JET_VARS, "tracks": TRACK_VARS, "EDGE": ["dR", "z", "isSelfLoop"]}
    edges = {"embed_dim": 4, "hidden_layers": [8], "update_edges": True}
    model = build(small_cfg(variables, edges=edges))
    batch = make_batch()
    raw = torch.rand(3, 5, 4) + 0.1  # pt, eta, phi, subjetIndex
    raw = raw.masked_fill(batch.masks["tracks"][..., None], 0)
    batch.inputs["EDGE"] = raw
    preds, losses = model(*batch)
    assert torch.isfinite(sum(losses.values()))
    padded = pad(batch, 2)
    padded.inputs["EDGE"] = torch.cat([raw, torch.zeros(3, 2, 4)], 1)
    with torch.no_grad():
        p2, _ = model(*padded)
    torch.testing.assert_close(preds["jet_classification"].detach(), p2["jet_classification"])


def test_permutation_equivariance():
    model = build(small_cfg())
    batch = make_batch(n_tracks=(5, 5, 5))
    perm = torch.tensor([3, 0, 4, 1, 2])
    inputs = dict(batch.inputs, tracks=batch.inputs["tracks"][:, perm])
    masks = {"tracks": batch.masks["tracks"][:, perm]}
    with torch.no_grad():
        p1, _ = model(batch.inputs, batch.masks)
        p2, _ = model(inputs, masks)
    torch.testing.assert_close(p1["jet_classification"], p2["jet_classification"])
    torch.testing.assert_close(p1["track_origin"][:, perm], p2["track_origin"])
    torch.testing.assert_close(p1["track_vertexing"][:, perm][:, :, perm], p2["track_vertexing"])
