"""Edge features against a naive per-pair loop."""

from __future__ import annotations

import math

import pytest
import torch

from saltx.models.edges import EDGE_FEATURES, EdgeFeatures, edge_features, wrap_phi


def _wrap(d: float) -> float:
    while d > math.pi:
        d -= 2 * math.pi
    while d <= -math.pi:
        d += 2 * math.pi
    return d


def _log(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 0.0  # log 0 = -inf and NaN become 0
    return math.log(x)


def _naive(raw: torch.Tensor, mask: torch.Tensor, names) -> torch.Tensor:
    b, n, _ = raw.shape
    out = torch.zeros(b, n, n, len(names))
    r = raw.double().tolist()
    for bi in range(b):
        for i in range(n):
            for j in range(n):
                if mask[bi, i] or mask[bi, j]:
                    continue
                pt_i, eta_i, phi_i, s_i = r[bi][i]
                pt_j, eta_j, phi_j, s_j = r[bi][j]
                dr = math.hypot(eta_j - eta_i, _wrap(phi_j - phi_i))
                values = {
                    "dR": _log(dr),
                    "kt": _log(min(pt_i, pt_j) * dr),
                    "z": _log(min(pt_i, pt_j) / (pt_i + pt_j)) if pt_i + pt_j else 0.0,
                    "isSelfLoop": float(i == j),
                    "subjetIndex": float(s_i == s_j and s_i >= 0),
                }
                out[bi, i, j] = torch.tensor([values[name] for name in names])
    return out


def _raw(b: int, n: int) -> torch.Tensor:
    pt = torch.rand(b, n) * 50 + 0.5
    eta = torch.randn(b, n)
    phi = (torch.rand(b, n) * 2 - 1) * math.pi
    subjet = torch.randint(-1, 3, (b, n)).float()
    return torch.stack([pt, eta, phi, subjet], -1)


def test_all_features_match_naive_loop():
    torch.manual_seed(0)
    raw = _raw(3, 7)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 4:] = True
    mask[2] = True
    names = list(EDGE_FEATURES)
    out = edge_features(raw, mask, names)
    assert out.shape == (3, 7, 7, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, _naive(raw, mask, names), rtol=1e-5, atol=1e-5)
    assert torch.all(out[2] == 0)


@pytest.mark.parametrize("name", EDGE_FEATURES)
def test_each_feature_alone_and_order(name):
    torch.manual_seed(1)
    raw = _raw(2, 5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    out = edge_features(raw, mask, [name])
    torch.testing.assert_close(out, _naive(raw, mask, [name]), rtol=1e-5, atol=1e-5)
    both = edge_features(raw, mask, ["isSelfLoop", name])
    torch.testing.assert_close(both[..., 1:], out)


@pytest.mark.parametrize("phi_i,phi_j", [(3.0, -3.0), (-3.0, 3.0), (0.1, -3.1), (-3.1, 0.1)])
def test_dphi_wrapped_both_directions(phi_i, phi_j):
    raw = torch.tensor([[[10.0, 0.0, phi_i, 0.0], [20.0, 0.0, phi_j, 0.0]]])
    out = edge_features(raw, None, ["dR", "kt"])
    expected_dr = abs(_wrap(phi_j - phi_i))
    assert expected_dr < math.pi
    for i, j in [(0, 1), (1, 0)]:
        assert out[0, i, j, 0].item() == pytest.approx(math.log(expected_dr), rel=1e-5)
        assert out[0, i, j, 1].item() == pytest.approx(math.log(10 * expected_dr), rel=1e-5)
    assert torch.equal(out[0, 0, 1], out[0, 1, 0])  # symmetric, unlike Salt's one-sided wrap


def test_wrap_phi_range():
    boundary = wrap_phi(torch.tensor([math.pi, -math.pi]))
    torch.testing.assert_close(boundary.abs(), torch.full((2,), math.pi))
    d = torch.tensor([6.0, -6.0, 0.0, 3 * math.pi + 0.1, -7.0, 2.0, -2.0])
    w = wrap_phi(d)
    assert torch.all(w > -math.pi) and torch.all(w <= math.pi)
    expected = torch.tensor([_wrap(x) for x in d.double().tolist()], dtype=torch.float32)
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-5)


def test_non_finite_become_zero_and_padded_garbage_ignored():
    raw = torch.tensor(
        [[[0.0, 0.0, 0.0, -1.0], [5.0, 0.0, 0.0, -1.0], [float("nan")] * 4, [1e30] * 4]]
    )
    mask = torch.tensor([[False, False, True, True]])
    out = edge_features(raw, mask, list(EDGE_FEATURES))
    assert torch.isfinite(out).all()
    # identical positions: dR = log 0 -> 0; zero pt: kt, z -> 0; negative subjet index -> 0
    assert torch.all(out[0, 0, 1, :3] == 0)
    assert out[0, 0, 0, 3] == 1 and out[0, 1, 1, 3] == 1
    assert torch.all(out[0, :, :, 4] == 0)
    assert torch.all(out[0, 2:] == 0) and torch.all(out[0, :, 2:] == 0)


def test_module_and_errors():
    module = EdgeFeatures(["dR", "z"])
    assert module.num_features == 2
    raw = _raw(2, 4)
    assert torch.equal(module(raw), edge_features(raw, None, ["dR", "z"]))
    with pytest.raises(ValueError, match="Unknown edge feature"):
        EdgeFeatures(["dR", "mass"])
    with pytest.raises(ValueError, match="No edge features"):
        EdgeFeatures([])
    with pytest.raises(ValueError, match=r"\(B, N, 4\)"):
        edge_features(torch.zeros(2, 3, 3), None, ["dR"])
