"""Cross-attention encoder: structure, sequential layers, padding, fully padded types."""

from __future__ import annotations

import pytest
import torch

from saltx.models.crossattn import TransformerCrossAttentionEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = ["tracks", "electrons", "muons"]


def _mask(b: int, n: int) -> torch.Tensor:
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, n // 2 :] = True
    mask[-1] = True
    return mask


def _inputs(b=3, sizes=(6, 4, 3)):
    x = {name: torch.randn(b, n, 8) for name, n in zip(NAMES, sizes)}
    masks = {name: _mask(b, n) for name, n in zip(NAMES, sizes)}
    return x, masks


def test_structure():
    enc = TransformerCrossAttentionEncoder(NAMES, 8, 3, 2, out_dim=5)
    assert set(enc.self_attention) == set(NAMES)
    assert all(len(stack) == 3 for stack in enc.self_attention.values())
    assert len(enc.cross_attention) == 3  # one per unordered pair
    assert all(len(layers) == 2 for layers in enc.cross_attention.values())
    assert [enc._ca_index(i) for i in range(3)] == [0, None, 1]
    every = TransformerCrossAttentionEncoder(NAMES[:2], 8, 3, 2, ca_every_layer=True)
    assert [len(v) for v in every.cross_attention.values()] == [3]
    single = TransformerCrossAttentionEncoder(NAMES[:2], 8, 1, 2)
    assert [len(v) for v in single.cross_attention.values()] == [1]
    assert enc.out_size == 5 and single.out_size == 8


def test_layers_are_sequential():
    """Layer i reads the output of layer i - 1 (Salt's seed read the original inputs)."""
    enc = TransformerCrossAttentionEncoder(NAMES[:2], 8, 2, 2).eval()
    x, masks = _inputs(sizes=(5, 4))
    x = {k: x[k] for k in NAMES[:2]}
    masks = {k: masks[k] for k in NAMES[:2]}
    with torch.no_grad():
        out = enc(x, masks)
        h = dict(x)
        for i in range(2):
            for k in h:
                h[k], _ = enc.self_attention[k][i](h[k], masks[k])
            ca = enc.cross_attention["tracks__electrons"][i]
            t, e = h["tracks"], h["electrons"]
            h["tracks"] = t + ca.update(t, e, masks["electrons"])
            h["electrons"] = e + ca.update(e, t, masks["tracks"])
        for k in h:
            torch.testing.assert_close(out[k][~masks[k]], enc.final_norm(h[k])[~masks[k]])


@pytest.mark.parametrize("ca_every_layer", [False, True])
@pytest.mark.parametrize("pads", [(1, 2, 3), (11, 0, 20)])
def test_padding_invariance_bitwise(ca_every_layer, pads, tile):
    enc = TransformerCrossAttentionEncoder(
        NAMES, 8, 3, 2, activation="SiLU", context_dim=2, ca_every_layer=ca_every_layer
    ).eval()
    x, masks = _inputs()
    context = torch.randn(3, 2)
    xp, masksp = {}, {}
    for (name, value), p in zip(x.items(), pads):
        xp[name] = torch.cat([value, 100 * torch.randn(3, p, 8)], 1)
        masksp[name] = torch.cat([masks[name], torch.ones(3, p, dtype=torch.bool)], 1)
    with torch.no_grad():
        out, outp = enc(x, masks, context=context), enc(xp, masksp, context=context)
    for name in NAMES:
        n = x[name].shape[1]
        valid = ~masks[name]
        assert torch.equal(out[name][valid], outp[name][:, :n][valid])


def test_permutation_equivariance():
    enc = TransformerCrossAttentionEncoder(NAMES[:2], 8, 2, 2).eval()
    x = {"tracks": torch.randn(2, 6, 8), "electrons": torch.randn(2, 3, 8)}
    masks = {"tracks": _mask(2, 6), "electrons": _mask(2, 3)}
    perm = torch.randperm(6)
    with torch.no_grad():
        out = enc(x, masks)
        xp = {"tracks": x["tracks"][:, perm], "electrons": x["electrons"]}
        mp = {"tracks": masks["tracks"][:, perm], "electrons": masks["electrons"]}
        outp = enc(xp, mp)
    valid = ~mp["tracks"]
    torch.testing.assert_close(outp["tracks"][valid], out["tracks"][:, perm][valid])
    torch.testing.assert_close(outp["electrons"], out["electrons"])


def test_all_padded_types_finite_with_gradients():
    enc = TransformerCrossAttentionEncoder(NAMES[:2], 8, 2, 2, out_dim=4)
    x = {"tracks": torch.randn(2, 4, 8, requires_grad=True), "electrons": torch.randn(2, 3, 8)}
    masks = {"tracks": torch.ones(2, 4, dtype=torch.bool), "electrons": _mask(2, 3)}
    out = enc(x, masks)
    assert all(torch.isfinite(v).all() for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    assert torch.isfinite(x["tracks"].grad).all()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_errors_and_missing_masks():
    enc = TransformerCrossAttentionEncoder(NAMES[:2], 8, 1, 2)
    x = {"tracks": torch.randn(2, 4, 8), "electrons": torch.randn(2, 3, 8)}
    out = enc(x, {})
    assert out["tracks"].shape == (2, 4, 8) and out["electrons"].shape == (2, 3, 8)
    with pytest.raises(NotImplementedError, match="edge features"):
        enc(x, {}, edges=torch.randn(2, 4, 4, 2))
    with pytest.raises(ValueError, match="built for inputs"):
        enc({"tracks": x["tracks"]}, {})
    with pytest.raises(ValueError, match="muP needs out_dim"):
        TransformerCrossAttentionEncoder(NAMES[:2], 8, 1, 2, muP=True)
    with pytest.raises(ValueError, match="unique"):
        TransformerCrossAttentionEncoder(["a", "a"], 8, 1, 2)
