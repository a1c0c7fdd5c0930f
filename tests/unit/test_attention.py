"""Attention kernels, masked softmax and multi-head attention."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from saltx.models.attention import (
    GATv2Attention,
    MultiheadAttention,
    ScaledDotProductAttention,
)
from saltx.models.masking import (
    build_attn_mask,
    compact_valid,
    exact_sum,
    gather_seq,
    masked_softmax,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _mask(b: int, n: int) -> torch.Tensor:
    """Padding mask with one partially padded, one fully padded and full jets."""
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, n // 2 :] = True
    mask[-1] = True
    return mask


# ----------------------------------------------------------------------------- masking


def test_masked_softmax_matches_softmax_and_zeroes_masked():
    x = torch.randn(4, 3, 7)
    mask = torch.rand(4, 3, 7) < 0.3
    mask[0, 0] = True  # fully masked row
    out = masked_softmax(x, mask)
    ref = torch.softmax(x.masked_fill(mask, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(out, ref)
    assert torch.all(out[mask] == 0)
    assert torch.all(out[0, 0] == 0)


def test_masked_softmax_gradients_finite_on_fully_masked_rows():
    x = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
    masked_softmax(x, mask).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[0] == 0)


def test_masked_softmax_broadcasts_low_rank_mask_and_handles_empty():
    x = torch.randn(2, 3, 4, 5)
    mask = torch.rand(2, 5) < 0.5
    torch.testing.assert_close(masked_softmax(x, mask), masked_softmax(x, mask[:, None, None]))
    assert masked_softmax(torch.randn(2, 0), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0)


def test_exact_sum_ignores_trailing_zeros_bitwise():
    for n in range(1, 40):
        x = torch.randn(3, n, 5)
        padded = torch.cat([x, torch.zeros(3, 17, 5)], 1)
        assert torch.equal(exact_sum(x, 1), exact_sum(padded, 1))
    torch.testing.assert_close(exact_sum(x, 1), x.sum(1))


def test_build_attn_mask_shapes():
    q_mask = torch.tensor([[False, True]])
    kv_mask = torch.tensor([[False, False, True]])
    assert build_attn_mask(None, None) is None
    assert build_attn_mask(q_mask, kv_mask).shape == (1, 1, 1, 3)
    merged = build_attn_mask(q_mask, kv_mask, block_queries=True)
    assert merged.shape == (1, 1, 2, 3)
    assert merged[0, 0, 1].all() and merged[0, 0, 0].tolist() == [False, False, True]


def test_compact_valid_moves_valid_first_and_back():
    mask = torch.tensor([[False, True, False, True, False], [True, True, False, False, True]])
    x = torch.arange(10.0).view(2, 5, 1)
    order, pos = compact_valid(mask)
    compact = gather_seq(x, order)
    assert compact[0, :3, 0].tolist() == [0.0, 2.0, 4.0]
    assert compact[1, :2, 0].tolist() == [7.0, 8.0]
    assert gather_seq(mask, order).tolist() == [[False] * 3 + [True] * 2, [False] * 2 + [True] * 3]
    assert torch.equal(gather_seq(compact, pos), x)


# ----------------------------------------------------------------------------- kernels


def _naive_sdpa(q, k, v, mask, scale, bias=None, gate=None):
    s = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias
    w = torch.softmax(s.masked_fill(mask, float("-inf")), -1).nan_to_num(0.0)
    if gate is not None:
        w = w * gate
    return w @ v


@pytest.mark.parametrize("fused", [None, True, False])
@pytest.mark.parametrize("lq,lk", [(5, 5), (1, 23), (17, 3), (33, 40)])
def test_sdpa_kernel_matches_naive(fused, lq, lk, tile):
    b, h, dh = 3, 2, 8
    q, k, v = torch.randn(b, h, lq, dh), torch.randn(b, h, lk, dh), torch.randn(b, h, lk, dh)
    mask = build_attn_mask(None, _mask(b, lk))
    kernel = ScaledDotProductAttention(h, dh, fused=fused)
    out = kernel(q, k, v, mask)
    torch.testing.assert_close(out, _naive_sdpa(q, k, v, mask, dh**-0.5))
    assert torch.all(out[-1] == 0)  # fully padded jet
    bias, gate = torch.randn(b, h, lq, lk), torch.rand(b, h, lq, lk)
    out, scores = kernel(q, k, v, mask, bias=bias, gate=gate, return_scores=True)
    torch.testing.assert_close(out, _naive_sdpa(q, k, v, mask, dh**-0.5, bias, gate))
    torch.testing.assert_close(scores, q @ k.transpose(-1, -2) * dh**-0.5 + bias)


def test_sdpa_kernel_without_mask_and_query_mask():
    b, h, l, dh = 2, 2, 6, 4
    q, k, v = (torch.randn(b, h, l, dh) for _ in range(3))
    kernel = ScaledDotProductAttention(h, dh, scale=0.3)
    none = torch.zeros(b, 1, 1, l, dtype=torch.bool)
    torch.testing.assert_close(kernel(q, k, v, None), _naive_sdpa(q, k, v, none, 0.3))
    qmask = build_attn_mask(_mask(b, l), None, block_queries=True)  # (B,1,L,1)
    out = kernel(q, k, v, qmask)
    torch.testing.assert_close(out, _naive_sdpa(q, k, v, qmask.expand(b, 1, l, l), 0.3))


def _naive_gatv2(q, k, v, mask, a, act, bias=None, gate=None):
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    s = torch.zeros(b, h, lq, lk)
    for bi in range(b):
        for hi in range(h):
            for i in range(lq):
                for j in range(lk):
                    s[bi, hi, i, j] = (a[hi] * act(q[bi, hi, i] + k[bi, hi, j])).sum()
    if bias is not None:
        s = s + bias
    w = torch.zeros_like(s)
    for bi in range(b):
        for hi in range(h):
            for i in range(lq):
                valid = ~mask[bi, 0, 0]
                if valid.any():
                    w[bi, hi, i, valid] = torch.softmax(s[bi, hi, i, valid], -1)
    if gate is not None:
        w = w * gate
    return w @ v


@pytest.mark.parametrize("activation", ["SiLU", "LeakyReLU"])
def test_gatv2_matches_naive_loop(activation, tile):
    b, h, lq, lk, dh = 3, 2, 4, 5, 3
    q, k, v = torch.randn(b, h, lq, dh), torch.randn(b, h, lk, dh), torch.randn(b, h, lk, dh)
    mask = build_attn_mask(None, _mask(b, lk))
    kernel = GATv2Attention(h, dh, activation=activation)
    act = getattr(torch.nn, activation)()
    with torch.no_grad():
        ref = _naive_gatv2(q, k, v, mask, kernel.a, act)
        torch.testing.assert_close(kernel(q, k, v, mask), ref)
        bias, gate = torch.randn(b, h, lq, lk), torch.rand(b, h, lq, lk)
        ref = _naive_gatv2(q, k, v, mask, kernel.a, act, bias, gate)
        torch.testing.assert_close(kernel(q, k, v, mask, bias=bias, gate=gate), ref)
    assert kernel.a.shape == (h, dh)


def test_gatv2_rejects_wrong_head_layout():
    kernel = GATv2Attention(2, 4)
    x = torch.randn(1, 4, 3, 2)
    with pytest.raises(ValueError, match="heads of dim"):
        kernel(x, x, x, None)


# ----------------------------------------------------------------------------- MHA


def _copy_into_torch_mha(mha: MultiheadAttention) -> torch.nn.MultiheadAttention:
    d = mha.embed_dim
    ref = torch.nn.MultiheadAttention(d, mha.num_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([mha.linear_q.weight, mha.linear_k.weight, mha.linear_v.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([mha.linear_q.bias, mha.linear_k.bias, mha.linear_v.bias]))
        ref.out_proj.weight.copy_(mha.linear_out.weight)
        ref.out_proj.bias.copy_(mha.linear_out.bias)
    return ref.eval()


@pytest.mark.parametrize("fused", [None, True])
def test_mha_matches_torch_multihead_attention(fused):
    b, n, d, h = 4, 9, 16, 4
    mha = MultiheadAttention(d, h, attention=partial(ScaledDotProductAttention, fused=fused))
    ref = _copy_into_torch_mha(mha)
    x = torch.randn(b, n, d)
    mask = _mask(b, n)
    with torch.no_grad():
        out, edge_out = mha(x, q_mask=mask)
        expected, _ = ref(x, x, x, key_padding_mask=mask, need_weights=False)
    assert edge_out is None
    valid = ~mask.all(-1)  # jets with at least one valid key
    torch.testing.assert_close(out[valid], expected[valid], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()


def test_mha_cross_attention_matches_torch_with_kv_dim():
    b, lq, lk, d, h = 3, 2, 7, 8, 2
    mha = MultiheadAttention(d, h, kv_dim=d)
    ref = _copy_into_torch_mha(mha)
    q, kv = torch.randn(b, lq, d), torch.randn(b, lk, d)
    kv_mask = _mask(b, lk)
    with torch.no_grad():
        out, _ = mha(q, kv, kv_mask=kv_mask)
        expected, _ = ref(q, kv, kv, key_padding_mask=kv_mask, need_weights=False)
    torch.testing.assert_close(out[:-1], expected[:-1], rtol=1e-5, atol=1e-5)
    # no valid key: zero attention, so the output is linear_out's bias
    torch.testing.assert_close(out[-1], mha.linear_out.bias.expand(lq, d).detach())
    assert MultiheadAttention(d, h, kv_dim=5).linear_k.in_features == 5


def test_mha_edges_bias_gate_and_update():
    b, n, d, h, de = 2, 6, 8, 2, 4
    mha = MultiheadAttention(d, h, edge_embed_dim=de, update_edges=True)
    x, edges = torch.randn(b, n, d), torch.randn(b, n, n, de)
    mask = _mask(b, n)
    with torch.no_grad():
        out, edge_out = mha(x, q_mask=mask, edges=edges)
        heads = [
            lin(x).view(b, n, h, d // h).transpose(1, 2)
            for lin in (mha.linear_q, mha.linear_k, mha.linear_v)
        ]
        bias = mha.linear_e(edges).permute(0, 3, 1, 2)
        gate = torch.sigmoid(mha.linear_g(edges)).permute(0, 3, 1, 2)
        attn_mask = mask[:, None, None, :]
        ref = _naive_sdpa(*heads, attn_mask, (d // h) ** -0.5, bias, gate)
        ref = mha.linear_out(ref.transpose(1, 2).reshape(b, n, d))
        scores = heads[0] @ heads[1].transpose(-1, -2) * (d // h) ** -0.5 + bias
        ref_edges = mha.linear_e_out(scores.permute(0, 2, 3, 1))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(edge_out, ref_edges)
    with pytest.raises(ValueError, match="edge_embed_dim=0"):
        MultiheadAttention(d, h)(x, edges=edges)


def test_mha_gatv2_factory_and_mup():
    mha = MultiheadAttention(8, 2, attention=partial(GATv2Attention, activation="ReLU"))
    assert isinstance(mha.attention, GATv2Attention) and mha.attention.head_dim == 4
    out, _ = mha(torch.randn(2, 3, 8))
    assert out.shape == (2, 3, 8)
    mup = MultiheadAttention(16, 4, muP=True)
    assert mup.attention.scale == pytest.approx(1 / 4)
    assert torch.all(mup.linear_q.weight == 0) and torch.all(mup.linear_k.bias == 0)
    assert MultiheadAttention(16, 4).attention.scale == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 4)


@pytest.mark.parametrize("kernel", ["sdpa", "gatv2"])
def test_mha_padding_invariance_bitwise(kernel, tile):
    b, n, p, d, h, de = 3, 6, 11, 8, 2, 4
    att = partial(GATv2Attention) if kernel == "gatv2" else None
    mha = MultiheadAttention(d, h, attention=att, edge_embed_dim=de, update_edges=True)
    x, edges = torch.randn(b, n, d), torch.randn(b, n, n, de)
    mask = _mask(b, n)
    xp = torch.cat([x, 100 * torch.randn(b, p, d)], 1)
    maskp = torch.cat([mask, torch.ones(b, p, dtype=torch.bool)], 1)
    edgesp = 100 * torch.randn(b, n + p, n + p, de)
    edgesp[:, :n, :n] = edges
    with torch.no_grad():
        out, e_out = mha(x, q_mask=mask, edges=edges)
        outp, e_outp = mha(xp, q_mask=maskp, edges=edgesp)
        assert torch.equal(out, outp[:, :n])
        assert torch.equal(e_out, e_outp[:, :n, :n])
        out, _ = mha(x, q_mask=mask)
        outp, _ = mha(xp, q_mask=maskp)
        assert torch.equal(out, outp[:, :n])


def test_fully_padded_gradients_finite():
    mha = MultiheadAttention(8, 2, edge_embed_dim=4, update_edges=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    edges = torch.randn(2, 5, 5, 4, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out, e_out = mha(x, q_mask=mask, edges=edges)
    (out.sum() + e_out.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(edges.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters() if p.grad is not None)


def test_dropout_only_in_training():
    kernel = ScaledDotProductAttention(1, 4, dropout=0.5)
    q = torch.randn(1, 1, 20, 4)
    kernel.eval()
    a = kernel(q, q, q, None)
    torch.testing.assert_close(a, kernel(q, q, q, None))
    kernel.train()
    assert not torch.allclose(kernel(q, q, q, None), a)
