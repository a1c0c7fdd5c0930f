"""The one-cycle schedule: equal to torch's OneCycleLR for one group, keeps group ratios."""

from __future__ import annotations

import pytest
import torch

from saltx.engine.schedule import (
    OneCycleSchedule,
    build_optimizer,
    one_cycle_factor,
    total_optimizer_steps,
)

LRS = {"initial": 1e-7, "peak": 5e-4, "end": 1e-7, "pct_start": 0.1}


def _params(n: int = 1) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2)) for _ in range(n)]


@pytest.mark.parametrize("total", [1, 7, 50, 333])
def test_matches_torch_one_cycle(total: int) -> None:
    ref_opt = torch.optim.AdamW(_params(), lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt,
        max_lr=LRS["peak"],
        total_steps=total,
        pct_start=LRS["pct_start"],
        div_factor=LRS["peak"] / LRS["initial"],
        final_div_factor=LRS["initial"] / LRS["end"],
    )
    opt = torch.optim.AdamW(_params(), lr=LRS["peak"])
    ours = OneCycleSchedule(opt, total, **LRS)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9)
        assert opt.param_groups[0]["betas"][0] == pytest.approx(
            ref_opt.param_groups[0]["betas"][0], rel=1e-9
        ), step
        ref_opt.step()
        if step < total - 1:
            ref.step()
        ours.step()


def test_endpoints_and_clamp() -> None:
    total = 100
    assert one_cycle_factor(0, total, 0.1, 1e-3, 1e-2, 1e-4) == pytest.approx(0.1)
    assert one_cycle_factor(9, total, 0.1, 1e-3, 1e-2, 1e-4) == pytest.approx(1.0)
    assert one_cycle_factor(99, total, 0.1, 1e-3, 1e-2, 1e-4) == pytest.approx(0.01)
    assert one_cycle_factor(500, total, 0.1, 1e-3, 1e-2, 1e-4) == pytest.approx(0.01)


def test_per_group_ratios_survive() -> None:
    """muP: groups built with different peak lrs keep their ratio at every step."""
    a, b = _params(2)
    opt = torch.optim.AdamW([{"params": [a], "lr": 4e-3}, {"params": [b], "lr": 1e-3}])
    sched = OneCycleSchedule(opt, 20, initial=1e-5, peak=4e-3, end=1e-6, pct_start=0.3)
    seen = set()
    for _ in range(20):
        lr_a, lr_b = sched.get_last_lr()
        assert lr_a / lr_b == pytest.approx(4.0)
        seen.add(round(lr_a, 12))
        sched.step()
    assert max(seen) == pytest.approx(4e-3)
    assert len(seen) > 10


def test_state_dict_round_trip() -> None:
    opt = torch.optim.AdamW(_params(), lr=1e-3)
    sched = OneCycleSchedule(opt, 30, initial=1e-5, peak=1e-3, end=1e-6)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW(_params(), lr=1e-3)
    sched2 = OneCycleSchedule(opt2, 30, initial=1e-5, peak=1e-3, end=1e-6)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]


def test_no_momentum_cycling_when_off() -> None:
    opt = torch.optim.AdamW(_params(), lr=1e-3, betas=(0.9, 0.99))
    sched = OneCycleSchedule(opt, 10, initial=1e-5, peak=1e-3, end=1e-6, cycle_momentum=False)
    sched.step()
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_bad_values_are_named() -> None:
    opt = torch.optim.AdamW(_params(), lr=1e-3)
    with pytest.raises(ValueError, match="pct_start"):
        OneCycleSchedule(opt, 10, initial=1e-5, peak=1e-3, end=1e-6, pct_start=1.5)
    with pytest.raises(ValueError, match="total_steps=0"):
        OneCycleSchedule(opt, 0, initial=1e-5, peak=1e-3, end=1e-6)


def test_total_steps() -> None:
    assert total_optimizer_steps(3, -1, 10, 1) == 30
    assert total_optimizer_steps(3, -1, 10, 4) == 9  # ceil(10 / 4) per epoch
    assert total_optimizer_steps(3, 7, 10, 1) == 7
    with pytest.raises(ValueError, match="max_epochs"):
        total_optimizer_steps(0, -1, 10, 1)


def test_build_optimizer_from_partial() -> None:
    cfg = {"_target_": "torch.optim.AdamW", "_partial_": True}
    opt = build_optimizer(cfg, _params(), lr=2e-3, weight_decay=0.5, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 2e-3 and opt.param_groups[0]["weight_decay"] == 0.5
    cfg = {"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.9, "weight_decay": 0.0}
    opt = build_optimizer(cfg, _params(), lr=2e-3, weight_decay=0.5, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["weight_decay"] == 0.0
    sched = OneCycleSchedule(opt, 20, initial=1e-5, peak=2e-3, end=1e-6)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    sched.step()
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.85)  # the peak at step 1
