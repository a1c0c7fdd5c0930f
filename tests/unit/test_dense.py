"""Dense MLP and InitNet: layer layout, context order, muP init, derived input sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saltx.models.dense import Dense, attach_context
from saltx.models.initnet import InitNet, init_net_input_size


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_default_hidden_layer_and_param_count():
    net = Dense(10, 3)
    assert [m.out_features for m in net.net if isinstance(m, nn.Linear)] == [20, 3]
    assert n_params(net) == 10 * 20 + 20 + 20 * 3 + 3


def test_context_is_prepended():
    torch.manual_seed(0)
    net = Dense(4, 2, hidden_layers=[8], context_size=3)
    x, ctx = torch.randn(2, 5, 4), torch.randn(2, 3)
    manual = torch.cat([ctx[:, None, :].expand(2, 5, 3), x], -1)
    torch.testing.assert_close(net(x, ctx), net.net(manual))
    assert attach_context(x, ctx).shape == (2, 5, 7)
    assert attach_context(torch.randn(2, 5, 5, 4), ctx).shape == (2, 5, 5, 7)


def test_missing_context_is_an_error():
    with pytest.raises(ValueError, match="context_size=3"):
        Dense(4, 2, context_size=3)(torch.randn(2, 4))


def test_layer_order_norm_dropout_linear_activation():
    net = Dense(
        4, 2, hidden_layers=[8], norm_layer="LayerNorm", dropout=0.1, final_activation="Sigmoid"
    )
    kinds = [type(m).__name__ for m in net.net]
    assert kinds == [
        "LayerNorm",
        "Dropout",
        "Linear",
        "ReLU",
        "LayerNorm",
        "Dropout",
        "Linear",
        "Sigmoid",
    ]
    assert net.first_linear_index == 2


def test_unknown_activation_error():
    with pytest.raises(ValueError, match=r"'Relu': expected one of .*ReLU"):
        Dense(4, 2, activation="Relu")
    with pytest.raises(ValueError, match="'Linear'"):  # a torch.nn class, not an activation
        Dense(4, 2, final_activation="Linear")


def test_mup_init():
    torch.manual_seed(0)
    net = Dense(400, 300, hidden_layers=[500], muP=True)
    lin = net.net[0]
    assert torch.all(lin.bias == 0)
    assert lin.weight.std().item() == pytest.approx(400**-0.5, rel=0.05)


def test_init_net_sizes_and_feature_order():
    variables = {"jets": ["a", "b"], "tracks": ["t1", "t2", "t3"], "PARAMETERS": ["m"]}
    assert init_net_input_size("tracks", variables, "jets", True) == 6
    assert init_net_input_size("tracks", variables, "jets", False) == 3
    net = InitNet("tracks", variables, output_size=4, hidden_layers=[5])
    inputs = {
        "jets": torch.randn(2, 2),
        "tracks": torch.randn(2, 7, 3),
        "PARAMETERS": torch.randn(2, 1),
    }
    expected_in = torch.cat(
        [
            inputs["PARAMETERS"][:, None].expand(2, 7, 1),
            inputs["jets"][:, None].expand(2, 7, 2),
            inputs["tracks"],
        ],
        -1,
    )
    torch.testing.assert_close(net(inputs), net.net.net(expected_in))


def test_edge_init_net_never_attaches_global():
    variables = {"jets": ["a"], "tracks": ["t"], "EDGE": ["dR", "z"]}
    net = InitNet("EDGE", variables, output_size=3)
    assert net.input_size == 2
    assert net({"EDGE": torch.randn(2, 4, 4, 2), "jets": torch.randn(2, 1)}).shape == (2, 4, 4, 3)


def test_init_net_unknown_input():
    with pytest.raises(KeyError, match="electrons"):
        init_net_input_size("electrons", {"jets": ["a"]}, "jets")


def test_single_output_rows_do_not_depend_on_batch_shape():
    torch.manual_seed(0)
    net = Dense(32, 1, hidden_layers=[32])
    x = torch.randn(3, 64, 32)
    short = net(x[:, :25])
    full = net(x)[:, :25]
    assert torch.equal(short, full)  # padding invariance to the bit
    torch.testing.assert_close(net(x), net.net(x))  # same map as the plain Sequential


@pytest.mark.parametrize("norm_layer", [None, "LayerNorm"])
def test_packed_forward_equals_forward_on_valid_rows(norm_layer, one_thread):
    torch.manual_seed(1)
    net = Dense(16, 3, hidden_layers=[24, 8], context_size=5, norm_layer=norm_layer).eval()
    x = torch.randn(6, 11, 16)
    ctx = torch.randn(6, 5)
    n_valid = torch.tensor([4, 0, 11, 7, 5, 9])
    mask = torch.arange(11)[None] >= n_valid[:, None]
    packed = net.forward_packed(x, mask, ctx)
    plain = net(x, ctx)
    valid = ~mask
    torch.testing.assert_close(packed[valid], plain[valid])
    assert torch.all(packed[mask] == 0)
    # the padded slots' content never matters
    garbage = x.masked_fill(mask[..., None], float("nan"))
    assert torch.equal(net.forward_packed(garbage, mask, ctx), packed)


def test_packed_forward_shape_errors():
    net = Dense(4, 2, context_size=3)
    with pytest.raises(ValueError, match=r"\(B, N\) mask"):
        net.forward_packed(torch.randn(2, 5, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no context"):
        net.forward_packed(torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool))


def test_packed_forward_without_slots():
    net = Dense(4, 2, context_size=3)
    out = net.forward_packed(
        torch.randn(5, 0, 4), torch.zeros(5, 0, dtype=torch.bool), torch.ones(5, 3)
    )
    assert out.shape == (5, 0, 2)
