"""salt-ml 0.13 architecture options: register tokens, non-affine LayerNorms, the final-norm
placement, the packed Xavier q/k/v initialisation, and the gn2_salt013 experiment."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from saltx.config import ConfigError, validate
from saltx.data.class_weights import load_class_dict
from saltx.data.norm import load_norm_dict
from saltx.engine.distributed import DistInfo
from saltx.engine.loop import configure_torch
from saltx.models.attention import MultiheadAttention
from saltx.models.build import build_model
from saltx.models.padding_skip import model_length_groups
from saltx.models.transformer import REGISTERS, TransformerEncoder

sys.path.insert(0, str(Path(__file__).parent))
from test_experiments import compose_experiment
from test_saltmodel import build, make_batch, pad, small_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def salt013_cfg():
    """The unit-test model of test_saltmodel with salt-ml 0.13's encoder options."""
    cfg = small_cfg(norm_affine=False)
    cfg.model.encoder.num_registers = 1
    cfg.model.encoder.final_norm = "after_out_proj"
    return cfg


def _nparams(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _mask(b: int, n: int) -> torch.Tensor:
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, n // 2 :] = True
    mask[-1] = True  # a jet without valid constituents
    return mask


def _pad(x: torch.Tensor, mask: torch.Tensor, p: int):
    garbage = 100.0 * torch.randn(x.shape[0], p, *x.shape[2:])
    return torch.cat([x, garbage], 1), torch.cat([mask, torch.ones(x.shape[0], p, dtype=bool)], 1)


@pytest.mark.parametrize("experiment,count", [("gn2", 2_343_502), ("gn2_salt013", 2_339_150)])
def test_gn2_parameter_counts(experiment, count, synthetic_dir, tmp_path):
    """Seed-era GN2 and salt-ml 0.13's GN2 (2 jet + 19 track variables, 4 classes)."""
    cfg = compose_experiment(experiment, synthetic_dir, tmp_path)
    assert len(cfg.data.variables.tracks) == 19 and len(cfg.data.variables.jets) == 2
    norm = load_norm_dict(cfg.data.norm_dict)
    class_dict = load_class_dict(cfg.data.class_dict)
    model = build_model(cfg, norm, class_dict, ["bjets", "cjets", "ujets", "taujets"])
    assert model.trainable_params == count


def test_parameter_differences_term_by_term():
    """Registers add R x D; non-affine norms remove 2 x D per norm (4 layers x 2 + final)."""
    d, out = 32, 16
    base = _nparams(TransformerEncoder(d, 4, 4, out_dim=out))
    assert _nparams(TransformerEncoder(d, 4, 4, out_dim=out, num_registers=3)) == base + 3 * d
    assert _nparams(TransformerEncoder(d, 4, 4, out_dim=out, norm_affine=False)) == base - 9 * 2 * d
    after = TransformerEncoder(d, 4, 4, out_dim=out, final_norm="after_out_proj")
    assert _nparams(after) == base - 2 * d + 2 * out
    assert _nparams(TransformerEncoder(d, 4, 4, out_dim=out, final_norm="none")) == base - 2 * d


@pytest.mark.parametrize("final_norm", ["before_out_proj", "after_out_proj", "none"])
def test_final_norm_placement(final_norm):
    enc = TransformerEncoder(16, 1, 2, out_dim=8, norm_affine=False, final_norm=final_norm).eval()
    x, mask = torch.randn(3, 5, 16), torch.zeros(3, 5, dtype=torch.bool)
    with torch.no_grad():
        out = enc({"t": x}, {"t": mask})["t"]
        h, _ = enc.layers[0](x, mask)
    expected = {
        "before_out_proj": enc.final_linear(torch.layer_norm(h, (16,))),
        "after_out_proj": torch.layer_norm(enc.final_linear(h), (8,)),
        "none": enc.final_linear(h),
    }[final_norm]
    torch.testing.assert_close(out, expected)
    if final_norm == "after_out_proj":  # unit-variance features into pooling and tasks
        torch.testing.assert_close(out.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"model\.encoder\.final_norm"):
        TransformerEncoder(8, 1, 2, final_norm="after")
    with pytest.raises(ValueError, match=r"model\.encoder\.num_registers"):
        TransformerEncoder(8, 1, 2, num_registers=-1)
    with pytest.raises(ValueError, match=r"model\.encoder\.qkv_init"):
        TransformerEncoder(8, 1, 2, qkv_init="xavier")


def test_non_affine_norms_have_no_parameters():
    enc = TransformerEncoder(8, 2, 2, out_dim=4, edge_embed_dim=4, update_edges=True)
    enc0 = TransformerEncoder(8, 2, 2, out_dim=4, edge_embed_dim=4, update_edges=True,
                              norm_affine=False)  # fmt: skip
    norms = [m for m in enc0.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == len([m for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)])
    assert norms and all(m.weight is None and m.bias is None for m in norms)


def test_registers_output_and_all_padded_jets():
    enc = TransformerEncoder(8, 2, 2, out_dim=6, num_registers=2).eval()
    x, mask = torch.randn(4, 5, 8), _mask(4, 5)
    out = enc({"tracks": x}, {"tracks": mask})
    assert list(out) == ["tracks", REGISTERS]
    assert out["tracks"].shape == (4, 5, 6) and out[REGISTERS].shape == (4, 2, 6)
    assert torch.isfinite(out[REGISTERS]).all() and torch.isfinite(out["tracks"]).all()
    # the registers are attended to: changing them changes the valid outputs
    with torch.no_grad():
        enc.registers.add_(1.0)
    out2 = enc({"tracks": x}, {"tracks": mask})
    assert not torch.allclose(out["tracks"][~mask], out2["tracks"][~mask])


@pytest.mark.parametrize("two_inputs", [False, True])
@pytest.mark.parametrize("p", [1, 13])
def test_registers_keep_padding_invariance_bitwise(two_inputs, p, tile):
    enc = TransformerEncoder(
        8, 2, 2, num_registers=2, norm_affine=False, final_norm="after_out_proj", out_dim=6,
        edge_embed_dim=4, update_edges=True,
    ).eval()  # fmt: skip
    x = {"tracks": torch.randn(3, 7, 8)}
    masks = {"tracks": _mask(3, 7)}
    if two_inputs:
        x["electrons"], masks["electrons"] = torch.randn(3, 4, 8), _mask(3, 4)
    edges = torch.randn(3, 7, 7, 4)
    xp, masksp = dict(x), dict(masks)
    xp["tracks"], masksp["tracks"] = _pad(x["tracks"], masks["tracks"], p)
    edgesp = 100.0 * torch.randn(3, 7 + p, 7 + p, 4)
    edgesp[:, :7, :7] = edges
    with torch.no_grad():
        out, outp = enc(x, masks, edges=edges), enc(xp, masksp, edges=edgesp)
    assert torch.equal(out[REGISTERS], outp[REGISTERS])
    for key in x:
        n, valid = x[key].shape[1], ~masks[key]
        assert torch.equal(out[key][valid], outp[key][:, :n][valid])


def test_model_with_registers_pools_them_and_tasks_never_see_them():
    model = build(salt013_cfg())
    batch = make_batch(n_tracks=(3, 0, 5), pad_to=5)
    with torch.no_grad():
        preds, losses = model(batch.inputs, batch.masks, batch.labels)
        encoded, pooled = model.representations(batch.inputs, batch.masks)
        pooled_tracks = model.pooling({"tracks": encoded["tracks"]}, batch.masks)
    assert preds["track_origin"].shape[:2] == (3, 5)
    assert preds["track_vertexing"].shape == (3, 5, 5)
    assert set(losses) == set(model.tasks) and all(torch.isfinite(v) for v in losses.values())
    assert REGISTERS in encoded and encoded[REGISTERS].shape == (3, 1, 12)
    assert not torch.allclose(pooled, pooled_tracks)  # the register is pooled
    assert torch.isfinite(pooled[1]).all()  # a jet without tracks still has the register


def test_model_with_registers_padding_invariance_and_length_groups():
    """Trimming and length groups (different lengths per group) with registers."""
    model = build(salt013_cfg())
    n_tracks = tuple([0, 1, 2, 3] * 20 + [9] * 40)  # several length groups of >= 32 jets
    batch = make_batch(n_tracks=n_tracks, pad_to=9, seed=1)
    padded = pad(batch, 20)
    with torch.no_grad():
        p1, l1 = model(batch.inputs, batch.masks, batch.labels)
        p2, l2 = model(padded.inputs, padded.masks, padded.labels)
    assert len(model_length_groups(model, batch.masks)) > 1
    torch.testing.assert_close(p1["jet_classification"], p2["jet_classification"])
    valid = ~batch.masks["tracks"]
    torch.testing.assert_close(p1["track_origin"][valid], p2["track_origin"][:, :9][valid])
    for key in l1:
        torch.testing.assert_close(l1[key], l2[key])


def test_norm_affine_false_needs_an_encoder_that_supports_it():
    cfg = small_cfg(norm_affine=False)
    cfg.model.encoder = {"_target_": "test_salt013.NoNormOption", "num_layers": 1}
    cfg.allowed_targets = ["test_salt013."]
    with pytest.raises(ValueError, match=r"model\.norm_affine=false"):
        build(cfg)


class NoNormOption(TransformerEncoder):
    """An encoder without the ``norm_affine`` argument (for the error test)."""

    def __init__(self, embed_dim: int, num_layers: int, num_heads: int, **kwargs) -> None:
        super().__init__(embed_dim, num_layers, num_heads)


def test_xavier_packed_qkv_init():
    torch.manual_seed(0)
    d = 256
    attn = MultiheadAttention(d, 8, qkv_init="xavier_packed")
    stacked = torch.cat([attn.linear_q.weight, attn.linear_k.weight, attn.linear_v.weight])
    bound = math.sqrt(6.0 / (d + 3 * d))
    assert stacked.abs().max() <= bound
    assert abs(stacked.std().item() - bound / math.sqrt(3.0)) < 0.01 * bound
    for layer in (attn.linear_q, attn.linear_k, attn.linear_v):
        assert torch.all(layer.bias == 0)
    default = MultiheadAttention(d, 8)
    assert default.linear_q.weight.abs().max() <= 1.0 / math.sqrt(d)
    assert torch.any(default.linear_q.bias != 0)


def test_salt_fit_float32_matmul_precision(synthetic_dir, tmp_path):
    """`salt fit` sets torch's float32 matmul precision to "medium" (bfloat16 matmuls on
    CPUs with AMX/AVX512-BF16: scripts/check_step_parity.py measured salt-ml's gradients
    with it); gn2_salt013 trains the same way, other experiments keep torch's setting."""
    salt = compose_experiment("gn2_salt013", synthetic_dir, tmp_path)
    gn2 = compose_experiment("gn2", synthetic_dir, tmp_path)
    assert salt.trainer.float32_matmul_precision == "medium"
    assert gn2.trainer.float32_matmul_precision is None
    quiet = {"num_threads": 1, "reuse_freed_memory": False}
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        configure_torch(OmegaConf.merge(gn2.trainer, quiet), DistInfo())
        assert torch.get_float32_matmul_precision() == "highest"
        configure_torch(OmegaConf.merge(salt.trainer, quiet), DistInfo())
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    bad = compose_experiment(
        "gn2_salt013", synthetic_dir, tmp_path, "trainer.float32_matmul_precision=bf16"
    )
    with pytest.raises(ConfigError, match=r"trainer\.float32_matmul_precision='bf16'"):
        validate(bad)
