"""Global attention pooling and cross-attention pooling."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from saltx.models.attention import GATv2Attention
from saltx.models.pooling import CrossAttentionPooling, GlobalAttentionPooling

pytestmark = pytest.mark.usefixtures("one_thread")


def _mask(b: int, n: int) -> torch.Tensor:
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, n // 2 :] = True
    mask[1, 1:] = True
    mask[-1] = True
    return mask


def _pad(x, mask, p):
    garbage = 100 * torch.randn(x.shape[0], p, x.shape[2])
    return torch.cat([x, garbage], 1), torch.cat([mask, torch.ones(x.shape[0], p, dtype=bool)], 1)


POOLINGS = {
    "gap": lambda: GlobalAttentionPooling(8),
    "ca": lambda: CrossAttentionPooling(8, num_layers=2, num_heads=2),
    "ca_ctx_gatv2": lambda: CrossAttentionPooling(
        8, num_heads=2, attention=partial(GATv2Attention), activation="SiLU", context_dim=3
    ),
}


def _call(pool, x, masks):
    context = torch.ones(next(iter(x.values())).shape[0], 3) if "ctx" in pool.tag else None
    return pool(x, masks, context=context)


def _make(name):
    pool = POOLINGS[name]().eval()
    pool.tag = name
    return pool


def test_gap_parameters_and_weighted_sum():
    pool = GlobalAttentionPooling(128)
    assert sum(p.numel() for p in pool.parameters()) == 129
    pool = GlobalAttentionPooling(4)
    x, mask = torch.randn(3, 5, 4), _mask(3, 5)
    with torch.no_grad():
        logits = pool.gate(x).squeeze(-1).masked_fill(mask, float("-inf"))
        w = torch.softmax(logits, 1).nan_to_num(0.0)
        ref = (w[..., None] * x).sum(1)
        out = pool({"tracks": x}, {"tracks": mask})
    torch.testing.assert_close(out, ref)
    assert torch.all(out[-1] == 0)  # all-padded jet
    torch.testing.assert_close(pool(x, mask), out)  # plain tensors work too


@pytest.mark.parametrize("name", list(POOLINGS))
@pytest.mark.parametrize("b,n,p", [(4, 6, 9), (3, 17, 1), (4, 2, 33)])
def test_padding_invariance_bitwise(name, b, n, p, tile):
    pool = _make(name)
    x = {"tracks": torch.randn(b, n, 8), "electrons": torch.randn(b, 3, 8)}
    masks = {"tracks": _mask(b, n), "electrons": _mask(b, 3)}
    xp, masksp = dict(x), dict(masks)
    xp["tracks"], masksp["tracks"] = _pad(x["tracks"], masks["tracks"], p)
    xp["electrons"], masksp["electrons"] = _pad(x["electrons"], masks["electrons"], 2)
    with torch.no_grad():
        out, outp = _call(pool, x, masks), _call(pool, xp, masksp)
    assert out.shape == (b, 8)
    assert torch.equal(out, outp)  # every jet, the all-padded one included


@pytest.mark.parametrize("name", list(POOLINGS))
def test_permutation_invariance(name):
    pool = _make(name)
    x, mask = torch.randn(3, 7, 8), _mask(3, 7)
    perm = torch.randperm(7)
    with torch.no_grad():
        out = _call(pool, {"t": x}, {"t": mask})
        outp = _call(pool, {"t": x[:, perm]}, {"t": mask[:, perm]})
        # moving constituents between types is a permutation of the concatenation too
        split = _call(pool, {"a": x[:, :3], "b": x[:, 3:]}, {"a": mask[:, :3], "b": mask[:, 3:]})
    torch.testing.assert_close(out, outp)
    torch.testing.assert_close(out, split)


@pytest.mark.parametrize("name", list(POOLINGS))
def test_all_padded_and_empty_finite_with_gradients(name):
    pool = _make(name).train()
    x = torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    out = _call(pool, {"t": x}, {"t": mask})
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters() if p.grad is not None)
    empty = _call(pool, {"t": torch.randn(2, 0, 8)}, {"t": torch.zeros(2, 0, dtype=torch.bool)})
    assert empty.shape == (2, 8) and torch.isfinite(empty).all()
    if name == "gap":
        assert torch.all(out == 0) and torch.all(empty == 0)
    else:  # no valid constituent: the token only sees zero attention
        torch.testing.assert_close(out[0], out[1])


def test_cross_attention_pooling_structure():
    pool = CrossAttentionPooling(8, num_layers=3, num_heads=2, hidden_dim_scale=1)
    assert len(pool.layers) == 3 and pool.class_token.shape == (1, 1, 8)
    assert pool.out_size == 8
    out = pool({"t": torch.randn(5, 4, 8)}, None)
    assert out.shape == (5, 8)
