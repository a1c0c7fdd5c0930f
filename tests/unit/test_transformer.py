"""Transformer encoder: parameter counts, padding invariance to the bit, permutation
equivariance, fully padded jets, edges, context, muP."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from saltx.models.attention import GATv2Attention, ScaledDotProductAttention
from saltx.models.transformer import FeedForward, TransformerEncoder, TransformerEncoderLayer

pytestmark = pytest.mark.usefixtures("one_thread")


def _nparams(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mask(b: int, n: int) -> torch.Tensor:
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, n // 2 :] = True
    mask[1, 1:] = True
    mask[-1] = True  # a jet without valid constituents
    return mask


def _pad(x, mask, p, scale=100.0):
    """Append p padded slots holding garbage."""
    garbage = scale * torch.randn(x.shape[0], p, *x.shape[2:])
    return torch.cat([x, garbage], 1), torch.cat([mask, torch.ones(x.shape[0], p, dtype=bool)], 1)


def _pad_edges(edges, p, scale=100.0):
    b, n = edges.shape[:2]
    out = scale * torch.randn(b, n + p, n + p, edges.shape[-1])
    out[:, :n, :n] = edges
    return out


def test_gn2_parameter_counts():
    assert _nparams(TransformerEncoderLayer(256, 8)) == 527_104
    enc = TransformerEncoder(256, 4, 8, out_dim=128)
    assert _nparams(enc) == 4 * 527_104 + 33_408
    assert enc.out_size == 128
    assert TransformerEncoder(16, 1, 2).out_size == 16


def test_edge_layer_parameters_and_update_off_on_last_layer():
    enc = TransformerEncoder(16, 3, 2, edge_embed_dim=4, update_edges=True)
    assert [layer.update_edges for layer in enc.layers] == [True, True, False]
    assert not hasattr(enc.layers[-1].attn, "linear_e_out")
    layer = TransformerEncoderLayer(16, 2, edge_embed_dim=4, update_edges=True)
    base = _nparams(TransformerEncoderLayer(16, 2))
    # norm_e, linear_e, linear_g, linear_e_out, norm_e_out
    assert _nparams(layer) - base == 8 + 10 + 10 + 12 + 8


ENCODERS = {
    "plain": {},
    "silu_context": {"activation": "SiLU", "context_dim": 3},
    "edges": {"edge_embed_dim": 4},
    "update_edges": {"edge_embed_dim": 4, "update_edges": True, "activation": "SiLU"},
    "gatv2_edges": {
        "attention": partial(GATv2Attention),
        "edge_embed_dim": 4,
        "update_edges": True,
    },
    "out_dim": {"out_dim": 5, "hidden_dim_scale": 3},
}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("b,n,p", [(4, 6, 9), (3, 17, 1), (4, 3, 30)])
def test_padding_invariance_bitwise(name, b, n, p, tile):
    kwargs = ENCODERS[name]
    enc = TransformerEncoder(8, 2, 2, **kwargs).eval()
    x = torch.randn(b, n, 8)
    mask = _mask(b, n)
    xp, maskp = _pad(x, mask, p)
    edges = edgesp = context = None
    if kwargs.get("edge_embed_dim"):
        edges = torch.randn(b, n, n, 4)
        edgesp = _pad_edges(edges, p)
    if kwargs.get("context_dim"):
        context = torch.randn(b, 3)
    with torch.no_grad():
        out = enc({"tracks": x}, {"tracks": mask}, edges=edges, context=context)["tracks"]
        outp = enc({"tracks": xp}, {"tracks": maskp}, edges=edgesp, context=context)["tracks"]
    valid = ~mask
    assert torch.equal(out[valid], outp[:, :n][valid])
    assert torch.isfinite(outp).all()


@pytest.mark.parametrize("n,p_tracks,p_electrons", [(5, 3, 6), (14, 9, 1), (20, 13, 17)])
@pytest.mark.parametrize("with_edges", [False, True])
def test_padding_invariance_bitwise_two_inputs(n, p_tracks, p_electrons, with_edges, tile):
    """Padding appended to the first type lands mid-sequence, crossing attention tiles."""
    enc = TransformerEncoder(8, 2, 2, edge_embed_dim=4, update_edges=True).eval()
    x = {"tracks": torch.randn(3, n, 8), "electrons": torch.randn(3, 4, 8)}
    masks = {"tracks": _mask(3, n), "electrons": _mask(3, 4)}
    xp, masksp = {}, {}
    for key, p in [("tracks", p_tracks), ("electrons", p_electrons)]:
        xp[key], masksp[key] = _pad(x[key], masks[key], p)
    edges = edgesp = None
    if with_edges:  # edges of the tracks only
        edges = torch.randn(3, n, n, 4)
        edgesp = _pad_edges(edges, p_tracks)
    with torch.no_grad():
        out, outp = enc(x, masks, edges=edges), enc(xp, masksp, edges=edgesp)
    assert list(out) == ["tracks", "electrons"]
    for key in x:
        n = x[key].shape[1]
        valid = ~masks[key]
        assert torch.equal(out[key][valid], outp[key][:, :n][valid])


def test_permutation_equivariance(
    tile,
):
    enc = TransformerEncoder(8, 2, 2, edge_embed_dim=4, update_edges=True).eval()
    b, n = 3, 7
    x, mask, edges = torch.randn(b, n, 8), _mask(b, n), torch.randn(b, n, n, 4)
    perm = torch.randperm(n)
    with torch.no_grad():
        out = enc({"t": x}, {"t": mask}, edges=edges)["t"]
        outp = enc({"t": x[:, perm]}, {"t": mask[:, perm]}, edges=edges[:, perm][:, :, perm])["t"]
    valid = ~mask
    torch.testing.assert_close(outp[valid[:, perm]], out[:, perm][valid[:, perm]])


@pytest.mark.parametrize("kwargs", [{}, {"edge_embed_dim": 4, "update_edges": True}])
def test_all_padded_finite_forward_and_backward(kwargs):
    enc = TransformerEncoder(8, 2, 2, out_dim=4, **kwargs)
    x = torch.randn(2, 5, 8, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    edges = torch.randn(2, 5, 5, 4, requires_grad=True) if kwargs else None
    out = enc({"t": x}, {"t": mask}, edges=edges)["t"]
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_non_finite_garbage_in_padded_slots_is_harmless():
    enc = TransformerEncoder(8, 2, 2, edge_embed_dim=4, update_edges=True).eval()
    x, mask, edges = torch.randn(3, 4, 8), _mask(3, 4), torch.randn(3, 4, 4, 4)
    xp, maskp = _pad(x, mask, 2)
    xp[:, 4:] = float("nan")
    xp[0, 3] = float("inf")  # padded slot of the half-padded jet
    edgesp = _pad_edges(edges, 2)
    edgesp[:, 4:] = float("nan")
    edgesp[0, :, 3] = float("-inf")
    with torch.no_grad():
        outp = enc({"t": xp}, {"t": maskp}, edges=edgesp)["t"]
        out = enc({"t": x}, {"t": mask}, edges=edges)["t"]
    assert torch.isfinite(outp).all()
    assert torch.equal(out[~mask], outp[:, :4][~mask])


def test_zero_length_and_missing_mask():
    enc = TransformerEncoder(8, 2, 2).eval()
    out = enc({"t": torch.randn(2, 0, 8)}, {"t": torch.zeros(2, 0, dtype=torch.bool)})["t"]
    assert out.shape == (2, 0, 8)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        no_mask = enc({"t": x}, {})["t"]
        all_valid = enc({"t": x}, {"t": torch.zeros(2, 3, dtype=torch.bool)})["t"]
    assert torch.equal(no_mask, all_valid)


def test_fused_kernel_agrees_with_exact():
    exact = TransformerEncoder(8, 2, 2).eval()
    fused = TransformerEncoder(8, 2, 2, attention=partial(ScaledDotProductAttention, fused=True))
    fused.load_state_dict(exact.state_dict())
    x, mask = torch.randn(3, 6, 8), _mask(3, 6)
    with torch.no_grad():
        a = exact({"t": x}, {"t": mask})["t"]
        b = fused.eval()({"t": x}, {"t": mask})["t"]
    torch.testing.assert_close(a[~mask], b[~mask], rtol=1e-5, atol=1e-5)


def test_edges_errors_and_first_input_edges():
    enc = TransformerEncoder(8, 1, 2, edge_embed_dim=4).eval()
    x = {"tracks": torch.randn(2, 3, 8), "electrons": torch.randn(2, 2, 8)}
    out = enc(x, {}, edges=torch.randn(2, 3, 3, 4))  # edges of the first input only
    assert out["tracks"].shape == (2, 3, 8) and out["electrons"].shape == (2, 2, 8)
    with pytest.raises(ValueError, match="Edges cover 4"):
        enc(x, {}, edges=torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="edge_embed_dim=0"):
        TransformerEncoder(8, 1, 2)(x, {}, edges=torch.randn(2, 5, 5, 4))


def test_context_is_prepended_to_ffn_input():
    ffn = FeedForward(4, 6, context_dim=2)
    x, ctx = torch.randn(3, 5, 4), torch.randn(3, 2)
    cat = torch.cat([ctx[:, None].expand(3, 5, 2), x], -1)
    ref = ffn.fc2(torch.relu(ffn.fc1(cat)))
    torch.testing.assert_close(ffn(x, ctx), ref)
    with pytest.raises(ValueError, match="no context"):
        ffn(x)


def test_mup_requires_out_dim_and_builds_readout():
    with pytest.raises(ValueError, match="muP needs out_dim"):
        TransformerEncoder(8, 1, 2, muP=True)
    from mup import MuReadout, set_base_shapes

    enc = TransformerEncoder(8, 2, 2, out_dim=4, muP=True)
    assert isinstance(enc.final_linear, MuReadout)
    assert torch.all(enc.final_linear.weight == 0)
    assert torch.all(enc.layers[0].attn.linear_q.weight == 0)
    assert enc.layers[0].attn.attention.scale == pytest.approx(1 / 4)
    base = TransformerEncoder(4, 2, 2, out_dim=4, muP=True)
    set_base_shapes(enc, base, rescale_params=True)
    out = enc({"t": torch.randn(2, 3, 8)}, {})["t"]
    assert out.shape == (2, 3, 4) and torch.isfinite(out).all()


class _Holder(torch.nn.Module):
    """The part of SaltModel that compile_model looks for: ``encoder.layers``."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


@pytest.mark.parametrize("fused", [None, False], ids=["default", "exact_tiles"])
def test_compiled_blocks_reuse_their_graph_across_batch_sizes_and_lengths(fused):
    """Trimmed, length-grouped batches give the blocks a new (jets, length) per call:
    compile_model's dynamic shapes let every shape reuse one graph, also with the exact
    tiles forced (their shape arithmetic has no tests of pad == 0, nq == 1, ...)."""
    from saltx.engine.loop import compile_model

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compiler.reset()
    attention = partial(ScaledDotProductAttention, fused=fused)
    enc = TransformerEncoder(16, 2, 2, attention=attention)
    ref = TransformerEncoder(16, 2, 2, attention=attention)
    ref.load_state_dict(enc.state_dict())
    holder = _Holder(enc)
    assert compile_model(holder, {"backend": counting_backend}) == 2
    counts = []
    # lengths of 2 and 3 tiles, multiples of the tile and not, various jet counts
    for b, n in [(5, 18), (7, 20), (3, 32), (9, 40), (4, 33), (2, 48)]:
        x = torch.randn(b, n, 16)
        mask = (torch.rand(b, n + 3) > 0.6)[:, :n]  # a trimmed (strided) mask
        mask[:, 0] = False
        xc = x.clone().requires_grad_()
        out = enc({"tracks": xc}, {"tracks": mask})["tracks"]
        out.sum().backward()
        torch.testing.assert_close(out, ref({"tracks": x}, {"tracks": mask})["tracks"])
        assert torch.isfinite(xc.grad).all()
        counts.append(len(graphs))
    assert counts[0] >= 1
    assert counts == [counts[0]] * len(counts), counts
    assert [k for k in holder.state_dict() if "_orig_mod" in k] == []
    torch.compiler.reset()


def test_exact_mode_is_off_inside_compiled_code():
    """Compiled regions use the fused formulations; eager CPU code keeps the exact ones."""
    from saltx.models.masking import exact_mode

    seen = []

    def probe(x):
        seen.append(exact_mode(x))
        return x + 1

    torch.compiler.reset()
    torch.compile(probe, backend="eager", dynamic=True)(torch.zeros(3))
    assert seen == [False]
    assert exact_mode(torch.zeros(3))
    torch.compiler.reset()
