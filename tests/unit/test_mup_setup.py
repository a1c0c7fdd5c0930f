"""muP step 2: base shapes on the model, MuAdamW groups through the schedule, compile,
checkpoint reload and the MuReadout fold used by the ONNX export."""

from __future__ import annotations

import io

import mup
import pytest
import torch
from torch import nn

from saltx.assemble import fit_datasets, model_from_config, shape_model
from saltx.engine.schedule import OneCycleSchedule, build_optimizer
from saltx.mup.fold import fold_mureadout
from saltx.mup.setup import CachedMuReadout, MupConfigError, apply_mup
from saltx.mup.shapes import compose_train, make_shapes, shape_file

BASE, DELTA, WIDTH = 16, 32, 64


def overrides(data_dir, shape_dir, *extra: str) -> list[str]:
    return [
        "experiment=gn2_mup",
        f"paths.data_dir={data_dir}",
        f"mup.shape_path={shape_dir}",
        f"model.embed_dim={WIDTH}",
        f"model.init_nets.tracks.hidden_layers=[{WIDTH}]",
        "model.num_heads=2",
        "model.out_dim=8",
        "model.encoder.num_layers=1",
        f"mup.embed_dim.parameter_base={BASE}",
        f"mup.embed_dim.parameter_delta={DELTA}",
        "+data.num_inputs.tracks=8",
        *extra,
    ]


def build(cfg) -> nn.Module:
    """The model of ``cfg`` with its base shapes (the composition step applies them once)."""
    return model_from_config(cfg)


def width_mults(optimizer: torch.optim.Optimizer) -> list[float]:
    """Per-group width multiplier of a muP optimizer (1.0 for vector-like groups)."""
    out = []
    for group in optimizer.param_groups:
        mults = {
            float(p.infshape.width_mult()) if p.infshape.ninf() == 2 else 1.0
            for p in group["params"]
            if hasattr(p, "infshape")
        }
        out.append(mults.pop() if len(mults) == 1 else 1.0)
    return out


@pytest.fixture(scope="module")
def mup_cfg(synthetic_dir, tmp_path_factory):
    shape_dir = tmp_path_factory.mktemp("shapes")
    ov = overrides(synthetic_dir, shape_dir)
    make_shapes(ov, shape_model)
    return compose_train(ov)


@pytest.fixture(scope="module")
def batch(mup_cfg):
    return fit_datasets(mup_cfg)["train"][0:16]


def test_model_gets_infshapes_and_mup_layers(mup_cfg, batch):
    torch.manual_seed(0)
    model = build(mup_cfg)
    assert all(hasattr(p, "infshape") for p in model.parameters())
    readout = model.encoder.final_linear
    assert isinstance(readout, CachedMuReadout)
    assert type(readout._cached_width_mult) is float
    assert readout.width_mult() == WIDTH / BASE
    assert torch.count_nonzero(readout.weight) == 0  # zero-initialised readout
    attn = model.encoder.layers[0].attn
    assert torch.count_nonzero(attn.linear_q.weight) == 0  # zero query weights
    assert attn.attention.scale == pytest.approx(1.0 / (WIDTH // 2))  # 1/d_head
    fc = model.encoder.layers[0].ffn
    w = next(m for m in fc.modules() if isinstance(m, nn.Linear)).weight
    assert w.std().item() == pytest.approx(WIDTH**-0.5, rel=0.15)  # N(0, 1/fan_in)
    _, losses = model(batch.inputs, batch.masks, batch.labels)
    assert torch.isfinite(sum(losses.values()))


def test_mup_needs_out_dim(synthetic_dir, tmp_path):
    cfg = compose_train(overrides(synthetic_dir, tmp_path, "model.out_dim=0"))
    with pytest.raises(Exception, match="out_dim"):
        build(cfg)


def test_mup_refuses_plain_adamw(synthetic_dir, tmp_path, mup_cfg):
    model = build(mup_cfg)
    cfg = compose_train(overrides(synthetic_dir, tmp_path, "optimizer=adamw"))
    with pytest.raises(MupConfigError, match="optimizer=muadamw"):
        apply_mup(model, cfg, shape_file(mup_cfg))


def test_missing_shape_file_falls_back_to_the_mup_block(synthetic_dir, tmp_path, mup_cfg):
    cfg = compose_train(overrides(synthetic_dir, tmp_path / "none"))
    model = build(cfg)
    assert model.encoder.final_linear.width_mult() == WIDTH / BASE
    ref = build(mup_cfg)
    assert {n: p.infshape for n, p in model.named_parameters()} == {
        n: p.infshape for n, p in ref.named_parameters()
    }


def test_group_learning_rates_keep_width_ratios_through_one_cycle(mup_cfg):
    model = build(mup_cfg)
    peak = 1e-3
    opt = build_optimizer(
        mup_cfg.optimizer,
        model.parameters(),
        lr=peak,
        weight_decay=1e-5,
        device=torch.device("cpu"),
    )
    assert isinstance(opt, torch.optim.AdamW)
    mults = width_mults(opt)
    assert sorted(set(mults)) == [1.0, WIDTH / BASE]
    sched = OneCycleSchedule(opt, 20, initial=1e-5, peak=peak, end=1e-6, pct_start=0.2)
    seen = set()
    for _ in range(20):
        lrs = [g["lr"] for g in opt.param_groups]
        vector_lr = lrs[mults.index(1.0)]
        seen.add(round(vector_lr, 12))
        for lr, m in zip(lrs, mults, strict=True):
            assert lr == pytest.approx(vector_lr / m, rel=1e-9)  # ratio 1/width_mult kept
        sched.step()
    assert len(seen) > 10  # the schedule did move the learning rate
    # the weight decay of matrix-like groups is scaled up by the width multiplier
    wds = {m: g["weight_decay"] for g, m in zip(opt.param_groups, mults, strict=True)}
    assert wds[WIDTH / BASE] == pytest.approx(1e-5 * WIDTH / BASE)


def test_compile_uses_cached_width_mult(mup_cfg, batch):
    torch.manual_seed(0)
    model = build(mup_cfg)
    readout = model.encoder.final_linear
    with torch.no_grad():
        readout.weight.normal_()
    x = torch.randn(3, 5, WIDTH)
    eager = readout(x)
    torch._dynamo.reset()
    compiled = torch.compile(readout, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)
    # the forward reads no infshape: removing it changes nothing
    del readout.weight.infshape
    torch.testing.assert_close(readout(x), eager)
    torch.testing.assert_close(eager, (x / (WIDTH / BASE)) @ readout.weight.T + readout.bias)


def test_checkpoint_reload_gives_the_same_model(mup_cfg, batch):
    torch.manual_seed(0)
    model = build(mup_cfg)
    opt = mup.MuAdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        sum(model(batch.inputs, batch.masks, batch.labels)[1].values()).backward()
        opt.step()
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(1)  # different fresh weights, overwritten by the checkpoint
    fresh = build(mup_cfg)
    fresh.load_state_dict(state)
    fresh.eval()
    # re-applying base shapes to loaded weights must not rescale them
    apply_mup(fresh, mup_cfg, shape_file(mup_cfg), rescale_params=False)
    with torch.no_grad():
        a = model(batch.inputs, batch.masks)[0]
        b = fresh(batch.inputs, batch.masks)[0]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_fold_mureadout_gives_an_equivalent_plain_model(mup_cfg, batch):
    torch.manual_seed(0)
    model = build(mup_cfg).eval()
    with torch.no_grad():
        model.encoder.final_linear.weight.normal_()
        model.encoder.final_linear.bias.normal_()
    folded = fold_mureadout(model)
    assert not any(isinstance(m, mup.MuReadout) for m in folded.modules())
    assert type(folded.encoder.final_linear) is nn.Linear
    assert isinstance(model.encoder.final_linear, CachedMuReadout)  # original untouched
    assert folded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        a = model(batch.inputs, batch.masks)[0]
        b = folded(batch.inputs, batch.masks)[0]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_fold_needs_base_shapes():
    with pytest.raises(RuntimeError, match="apply_mup"):
        fold_mureadout(nn.Sequential(mup.MuReadout(4, 2)))
