"""The one activation lookup: torch.nn classes, or position-independent SiLU/Sigmoid/Mish."""

from __future__ import annotations

import pytest
import torch

from saltx.models.activations import ACTIVATIONS, get_activation
from saltx.models.masking import stable_sigmoid


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_torch(name):
    x = torch.linspace(-100, 100, 2001)
    ref = getattr(torch.nn, name)()(x)
    plain = get_activation(name, position_independent=False)
    assert type(plain) is getattr(torch.nn, name)  # Dense builds Salt's exact modules
    torch.testing.assert_close(get_activation(name, position_independent=True)(x), ref)


def test_stable_activations_are_position_independent_and_finite():
    x = torch.randn(1000) * 30
    for name in ("SiLU", "Sigmoid", "Mish"):
        act = get_activation(name, position_independent=True)
        full = act(x)
        assert all(torch.equal(act(x[:n].clone()), full[:n]) for n in range(1, 70)), name
    big = torch.tensor([-1e4, 1e4], requires_grad=True)
    stable_sigmoid(big).sum().backward()
    assert torch.isfinite(big.grad).all()


@pytest.mark.parametrize("name", ["Relu", "Linear", "MultiheadAttention", "Softmax"])
@pytest.mark.parametrize("position_independent", [True, False])
def test_unknown_activation_names_it_and_the_choices(name, position_independent):
    with pytest.raises(ValueError, match=rf"Unknown activation '{name}': expected one of .*ReLU"):
        get_activation(name, position_independent=position_independent)
