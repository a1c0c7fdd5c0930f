"""The training loop on a toy model and an in-memory loader (no files, no saltx model).

Also importable by the subprocesses of the SIGTERM and DDP tests (``toy_build``).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from saltx.config import TrainConfig
from saltx.data.batch import Batch
from saltx.engine.callbacks import Callback, FitStart
from saltx.engine.checkpoint import load_checkpoint
from saltx.engine.distributed import DistInfo
from saltx.engine.loop import Components, NonFiniteLossError
from saltx.engine.run_setup import REDACTED
from saltx.engine.signals import exit_code
from saltx.train import train

KATIB_REGEX = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
HERE = Path(__file__).resolve().parent


# -- toy model and loader -------------------------------------------------------------------
class ToyBlock(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.lin(x)))


class ToyEncoder(nn.Module):
    def __init__(self, dim: int, n: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ToyBlock(dim, dropout) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ToyModel(nn.Module):
    """Two tasks (classification ``cls`` and regression ``reg``) on jet features."""

    def __init__(self, n_in: int = 4, dim: int = 16, n_classes: int = 3, dropout: float = 0.1):
        super().__init__()
        self.init = nn.Linear(n_in, dim)
        self.encoder = ToyEncoder(dim, 2, dropout)
        self.cls = nn.Linear(dim, n_classes)
        self.reg = nn.Linear(dim, 1)

    def forward(self, inputs, masks, labels=None):
        h = self.encoder(self.init(inputs["jets"]))
        preds = {"cls": self.cls(h), "reg": self.reg(h).squeeze(-1)}
        if labels is None:
            return preds, {}
        y = labels["jets"]
        losses = {
            "cls": nn.functional.cross_entropy(preds["cls"].float(), y["label"]),
            "reg": 0.5 * nn.functional.mse_loss(preds["reg"].float(), y["target"]),
        }
        return preds, losses


class ToyLoader:
    """Batches of contiguous jets; batch order shuffled per epoch from (seed, epoch)."""

    def __init__(
        self, x, label, target, batch_size, *, shuffle, seed=0, rank=0, world=1, delay=0.0
    ):
        self.x, self.label, self.target = x, label, target
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.delay = rank, world, delay
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def _ids(self) -> np.ndarray:
        n = math.ceil(len(self.x) / self.batch_size)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        return len(self._ids())

    def __iter__(self):
        for b in self._ids()[self.start :]:
            sl = slice(int(b) * self.batch_size, (int(b) + 1) * self.batch_size)
            if self.delay:
                time.sleep(self.delay)
            yield Batch(
                {"jets": self.x[sl]},
                {},
                {"jets": {"label": self.label[sl], "target": self.target[sl]}},
            )


def toy_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    label = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    target = x[:, 2] * 2 - x[:, 3]
    return x, label, target


def toy_build(cfg, info: DistInfo) -> Components:
    """A build function: toy model + in-memory loaders sharded by rank."""
    toy = cfg.get("toy") or {}
    x, label, target = toy_data(int(toy.get("n_train", 64)), seed=1)
    repeat = int(toy.get("repeat", 1))  # the same jets again: one small set to overfit
    x, label, target = x.repeat(repeat, 1), label.repeat(repeat), target.repeat(repeat)
    if toy.get("nan_target_at") is not None:  # poison one jet's target
        target[int(toy["nan_target_at"])] = float("nan")
    vx, vlabel, vtarget = toy_data(int(toy.get("n_val", 40)), seed=2)
    bs = int(cfg.data.batch_size) // info.world_size
    model = ToyModel(dropout=float(toy.get("dropout", 0.1)))
    train_loader = ToyLoader(
        x,
        label,
        target,
        bs,
        shuffle=bool(toy.get("shuffle", True)),
        seed=int(cfg.seed),
        rank=info.rank,
        world=info.world_size,
        delay=float(toy.get("delay", 0.0)),
    )
    val_loader = ToyLoader(
        vx, vlabel, vtarget, 7, shuffle=False, rank=info.rank, world=info.world_size
    )
    return Components(model, train_loader, val_loader, {"train_file": "toy"}, {})


def make_cfg(out: Path, *dotlist: str):
    """A full train config (schema defaults) for the toy build, with overrides."""
    cfg = OmegaConf.structured(TrainConfig)
    base = [
        f"paths.output_dir={out}",
        "data.train_file=toy",  # the toy build reads no files; the schema needs the keys
        "data.val_file=toy",
        "data.norm_dict=toy",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=2",
        "trainer.checkpoint_every_n_steps=0",
        "trainer.progress_bar=false",
        "trainer.deterministic=true",
        "lrs.initial=1e-3",
        "lrs.max=1e-2",
        "lrs.end=1e-3",
        "lrs.pct_start=0.2",
        "logger={name: none}",
        "optimizer={_target_: torch.optim.AdamW, _partial_: true}",
    ]
    merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(base))
    OmegaConf.set_struct(merged, False)
    return OmegaConf.merge(merged, OmegaConf.from_dotlist(list(dotlist)))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- tests ------------------------------------------------------------------------------------
def test_overfits_small_batch(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path / "run",
        "toy={n_train: 16, repeat: 150, dropout: 0.0, shuffle: false}",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=10",
        "lrs.max=3e-2",
        "trainer.performance_writer.std_out=false",
    )
    metrics = train(cfg, toy_build)
    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train_losses = [r["train/loss"] for r in logged if "train/loss" in r]
    assert train_losses[0] > 0.5
    assert train_losses[-1] < 0.1, train_losses
    assert metrics["train/loss"] < 0.1


def _all_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(str(path))
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, st in ckpt["optimizer"]["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = torch.as_tensor(v)
    return out


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_is_bit_identical(tmp_path: Path, accumulate: int, capsys) -> None:
    # 64 jets / 16 = 4 batches per epoch, 3 epochs; stop mid-epoch 2 and resume
    common = [
        "trainer.max_epochs=3",
        f"trainer.accumulate_grad_batches={accumulate}",
        "trainer.val_check_interval=3",
        "trainer.performance_writer.std_out=false",
        "lrs.total_steps=" + str(12 // accumulate),
    ]
    straight = make_cfg(tmp_path / "straight", *common)
    train(straight, toy_build)

    first = make_cfg(tmp_path / "resumed", *common, f"trainer.max_steps={5 // accumulate}")
    train(first, toy_build)
    ckpt = load_checkpoint(str(tmp_path / "resumed/checkpoints/last.pt"))
    assert ckpt["state"]["step"] == 5 // accumulate
    assert 0 < ckpt["state"]["batch_in_epoch"] < 4 or accumulate == 2
    capsys.readouterr()
    second = make_cfg(tmp_path / "resumed", *common)  # trainer.resume=auto finds last.pt
    train(second, toy_build)
    # it did resume (a deterministic run from scratch would give the same weights)
    last = str(tmp_path / "resumed/checkpoints/last.pt")
    meta = yaml.safe_load((tmp_path / "resumed/metadata.yaml").read_text())
    assert meta["resumed_from"] == last
    assert meta["start_step"] == 5 // accumulate
    assert f"resuming from {last} at step {5 // accumulate}" in capsys.readouterr().out

    a = _all_state(tmp_path / "straight/checkpoints/last.pt")
    b = _all_state(tmp_path / "resumed/checkpoints/last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = load_checkpoint(str(tmp_path / "straight/checkpoints/last.pt"))["state"]
    sb = load_checkpoint(str(tmp_path / "resumed/checkpoints/last.pt"))["state"]
    assert sa == sb


def test_checkpoint_contents_and_run_dir(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    cfg = make_cfg(
        out,
        "trainer.save_every_epoch=true",
        "data.config_S3={pubKey: visible-key, secKey: hidden, endpoint: http://x}",
        "remote={aws_secret_access_key: abc, my_token: t, ok: 1}",
    )
    metrics = train(cfg, toy_build)
    for name in ("last.pt", "best.pt", "epoch=000.pt", "epoch=001.pt"):
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "state", "config"}
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert last["state"]["epoch"] == 2 and last["state"]["step"] == 8
    assert not any(k.startswith("_orig_mod") for k in last["model"])
    assert last["config"]["data"]["config_S3"]["secKey"] == REDACTED
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["config_S3"]["pubKey"] == REDACTED
    assert config["data"]["config_S3"]["endpoint"] == "http://x"
    assert config["remote"] == {"aws_secret_access_key": REDACTED, "my_token": REDACTED, "ok": 1}
    assert config["paths"]["output_dir"] == str(out)
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["trainable_params"] == sum(p.numel() for p in ToyModel().parameters())
    assert meta["train_file"] == "toy" and meta["torch_version"] == torch.__version__
    records = read_jsonl(out / "metrics.jsonl")
    assert any("train/loss" in r and "train/lr" in r and "train/jets_per_s" in r for r in records)
    vals = [r for r in records if "val/loss" in r]
    assert len(vals) == 2  # one per epoch
    assert {"val/cls_loss", "val/reg_loss"} <= set(vals[0])
    assert math.isclose(vals[-1]["val/loss"], metrics["val/loss"])
    assert metrics["val/loss"] == pytest.approx(metrics["val/cls_loss"] + metrics["val/reg_loss"])
    # the Katib performance writer: stdout lines parsed with Katib's default regex
    found = dict(m[:2] for m in re.findall(KATIB_REGEX, capsys.readouterr().out))
    assert float(found["val_loss"]) == pytest.approx(metrics["val/loss"], abs=1e-5)
    assert "val_cls_loss" in found and "train_loss" in found
    perf = read_jsonl(out / "performance_metric.json")
    assert len(perf) == 2 and "timestamp" in perf[0] and perf[-1]["epoch"] == 1


def test_validation_matches_direct_average(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "run", "trainer.max_epochs=1", "toy={dropout: 0.0}")
    metrics = train(cfg, toy_build)
    model = ToyModel(dropout=0.0)
    model.load_state_dict(torch.load(tmp_path / "run/checkpoints/last.pt")["model"])
    vx, vlabel, vtarget = toy_data(40, seed=2)
    with torch.no_grad():
        _, losses = model({"jets": vx}, {}, {"jets": {"label": vlabel, "target": vtarget}})
    assert metrics["val/cls_loss"] == pytest.approx(losses["cls"].item(), rel=1e-5)
    assert metrics["val/reg_loss"] == pytest.approx(losses["reg"].item(), rel=1e-5)


def test_bf16_step(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "run", "trainer.precision=bf16", "trainer.max_steps=2")
    metrics = train(cfg, toy_build)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["train/loss"])
    after = torch.load(tmp_path / "run/checkpoints/last.pt")["model"]
    assert after["init.weight"].dtype == torch.float32
    torch.manual_seed(42)
    assert not torch.equal(after["init.weight"], ToyModel().state_dict()["init.weight"])


def test_non_finite_loss_names_step_task_and_checkpoint(tmp_path: Path) -> None:
    # jet 40 sits in batch 2 of each epoch (no shuffle): epoch 0 is fine until step 2
    cfg = make_cfg(
        tmp_path / "run",
        "toy={nan_target_at: 40, shuffle: false}",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.log_every_n_steps=100",
    )
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, toy_build)
    msg = str(err.value)
    assert re.search(r"optimizer step 2 \(epoch 0\) in task\(s\) reg\. ", msg), msg
    assert str(tmp_path / "run/checkpoints/last.pt") in msg
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2  # the last good one, written before step 3's NaN spread
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_sigterm_saves_and_exits_with_code(tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from test_engine_loop import make_cfg, toy_build\n"
        "from saltx.train import run\n"
        f"cfg = make_cfg(__import__('pathlib').Path({str(out)!r}), 'trainer.max_epochs=1000',\n"
        "               'toy={delay: 0.02}')\n"
        "run(cfg, toy_build)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_code(signal.SIGTERM) == 143, output
    assert "SIGTERM" in output
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["state"]["step"] >= 2


@pytest.mark.slow
def test_compile_in_place_keeps_state_dict_keys(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path / "run",
        "trainer.compile=true",
        "trainer.compile_backend=aot_eager",
        "trainer.max_steps=3",
    )
    metrics = train(cfg, toy_build)
    assert math.isfinite(metrics["val/loss"])
    keys = set(torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"])
    assert keys == set(ToyModel().state_dict())


def test_resuming_a_finished_run_revalidates(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path / "run", "trainer.max_epochs=1", "trainer.performance_writer.std_out=false"
    )
    first = train(cfg, toy_build)
    again = train(cfg, toy_build)  # resume=auto finds the final last.pt: no new steps
    assert again["val/loss"] == pytest.approx(first["val/loss"])
    assert torch.load(tmp_path / "run/checkpoints/last.pt")["state"]["step"] == 4
    meta = yaml.safe_load((tmp_path / "run/metadata.yaml").read_text())
    assert meta["resumed_from"] == str(tmp_path / "run/checkpoints/last.pt")
    assert meta["start_step"] == 4
    perf = read_jsonl(tmp_path / "run/performance_metric.json")
    assert len(perf) == 2  # the resumed run appended to the file


def test_resume_never_refuses_to_overwrite_a_run_unless_told(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path / "run",
        "trainer.performance_writer.std_out=false",
        "trainer.save_every_epoch=true",
        "trainer.max_epochs=1",
    )
    train(cfg, toy_build)
    ckpts = tmp_path / "run/checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    assert sorted(before) == ["best.pt", "epoch=000.pt", "last.pt"]
    config_before = (tmp_path / "run/config.yaml").read_text()
    cfg.trainer.max_steps = 3
    cfg.trainer.resume = "never"
    with pytest.raises(FileExistsError) as err:
        train(cfg, toy_build)
    msg = str(err.value)
    assert str(tmp_path / "run") in msg and "last.pt" in msg and "best.pt" in msg
    assert "trainer.resume=never" in msg and "overwrite=true" in msg
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # untouched
    assert (tmp_path / "run/config.yaml").read_text() == config_before

    cfg.overwrite = True
    cfg.trainer.save_every_epoch = False
    train(cfg, toy_build)
    assert torch.load(ckpts / "last.pt")["state"]["step"] == 3
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # epoch=000 gone
    meta = yaml.safe_load((tmp_path / "run/metadata.yaml").read_text())
    assert meta["resumed_from"] is None and meta["start_step"] == 0
    steps = [r["step"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")]
    assert steps == sorted(steps)  # the earlier run's metrics were removed


def test_auto_without_last_pt_warns_and_starts_afresh(tmp_path: Path, capsys) -> None:
    """Killed between best.pt and last.pt of the first epoch end: the restart goes on."""
    cfg = make_cfg(
        tmp_path / "run", "trainer.max_steps=2", "trainer.performance_writer.std_out=false"
    )
    train(cfg, toy_build)
    (tmp_path / "run/checkpoints/last.pt").unlink()
    train(cfg, toy_build)
    assert f"warning: {tmp_path / 'run'} holds best.pt but no checkpoints/last.pt" in (
        capsys.readouterr().out
    )
    meta = yaml.safe_load((tmp_path / "run/metadata.yaml").read_text())
    assert meta["resumed_from"] is None and meta["start_step"] == 0


def test_ckpt_path_of_another_run_needs_overwrite(tmp_path: Path) -> None:
    common = ["trainer.max_steps=2", "trainer.performance_writer.std_out=false"]
    train(make_cfg(tmp_path / "a", *common), toy_build)
    train(make_cfg(tmp_path / "b", *common), toy_build)
    other = str(tmp_path / "a/checkpoints/last.pt")
    with pytest.raises(FileExistsError, match="starts from another run's checkpoint"):
        train(make_cfg(tmp_path / "b", *common, f"ckpt_path={other}"), toy_build)
    # its own checkpoint is a resume, not an overwrite
    own = str(tmp_path / "b/checkpoints/best.pt")
    train(make_cfg(tmp_path / "b", "trainer.max_steps=3", f"ckpt_path={own}"), toy_build)
    assert torch.load(tmp_path / "b/checkpoints/last.pt")["state"]["step"] == 3


def test_progress_lines_without_a_tty(tmp_path: Path, capsys) -> None:
    """A batch job's log gets a plain progress line every N steps (stdout is no TTY)."""
    cfg = make_cfg(
        tmp_path / "run",
        "trainer.progress_every_n_steps=3",
        "trainer.progress_every_s=0",
        "trainer.performance_writer.std_out=false",
    )
    train(cfg, toy_build)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["3/8", "6/8"], lines
    assert re.fullmatch(
        r"step 3/8 \(37\.5%\) \| epoch 0 \| loss \d\.\d+ \| \d+ jets/s \| elapsed \d+:\d\d:\d\d"
        r" \| eta \d+:\d\d:\d\d",
        lines[0],
    ), lines[0]
    assert not any(re.search(KATIB_REGEX, x) for x in lines)  # no name=value for Katib


def test_fp16_step_saves_scaler_state(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "run", "trainer.precision=fp16", "trainer.max_steps=2")
    metrics = train(cfg, toy_build)
    assert math.isfinite(metrics["val/loss"])
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the GradScaler state is in the checkpoint


def test_gradient_clipping_and_accumulation_run(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path / "run",
        "trainer.gradient_clip_val=0.01",
        "trainer.accumulate_grad_batches=3",  # 4 batches/epoch: steps after batch 3 and 4
        "trainer.max_epochs=1",
    )
    train(cfg, toy_build)
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2 and ckpt["state"]["epoch"] == 1


def test_mfu_is_logged_with_a_peak(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "run", "trainer.peak_tflops=0.001", "trainer.max_steps=4")
    train(cfg, toy_build)
    logs = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "train/loss" in r]
    assert all(r["train/mfu"] > 0 for r in logs)


class Recorder(Callback):
    """Records the hooks the loop calls; raises at the validation of ``stop_at`` (a step)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def on_fit_start(self, start: FitStart) -> None:
        self.calls.append(("start", start.rundir.root, start.resumed_from))

    def on_validation_end(self, step: int, epoch: int, metrics) -> None:
        self.calls.append(("val", step, epoch, round(metrics["val/loss"], 6)))
        if step == self.stop_at:
            raise RuntimeError(f"stop at {step}")


def test_callbacks_get_the_hooks_in_order_and_a_raising_one_stops_the_run(tmp_path: Path):
    out = tmp_path / "run"
    first, second = Recorder(), Recorder()
    metrics = train(make_cfg(out), toy_build, callbacks=[first, second])
    assert first.calls == second.calls
    assert first.calls[0] == ("start", str(out), None)
    assert [c[1:3] for c in first.calls[1:]] == [(4, 0), (8, 1)]  # one validation per epoch
    assert first.calls[-1][3] == round(metrics["val/loss"], 6)
    assert not (out / "performance_metric.json").exists()  # only the callbacks passed run
    stopping = Recorder(stop_at=4)
    with pytest.raises(RuntimeError, match="stop at 4"):
        train(make_cfg(tmp_path / "stopped"), toy_build, callbacks=[stopping])
    last = torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=True)
    assert last["state"]["step"] == 4  # saved before the exception left the loop


def test_float32_matmul_precision_holds_for_the_run_only(tmp_path: Path) -> None:
    """trainer.float32_matmul_precision is torch's setting while the loop runs (what
    `salt fit` does with "medium"); the caller's setting is back afterwards."""

    class Seen(Callback):
        def on_fit_start(self, start: FitStart) -> None:
            self.at_start = torch.get_float32_matmul_precision()

    before = torch.get_float32_matmul_precision()
    seen = Seen()
    try:
        torch.set_float32_matmul_precision("highest")
        cfg = make_cfg(tmp_path / "run", "trainer.float32_matmul_precision=medium")
        train(cfg, toy_build, callbacks=[seen])
        assert seen.at_start == "medium"
        assert torch.get_float32_matmul_precision() == "highest"
        train(make_cfg(tmp_path / "default"), toy_build, callbacks=[seen])
        assert seen.at_start == "highest"  # null: left as it was
    finally:
        torch.set_float32_matmul_precision(before)


def test_the_loop_polls_its_thread_governor_after_each_step(tmp_path: Path, monkeypatch) -> None:
    """trainer.adapt_threads: the loop makes a governor from its settings, polls it after
    every optimizer step and closes it (the caller's threads back) when the run ends."""
    from saltx.engine import loop as loop_module

    made = []

    class Governor:
        def __init__(self, *args) -> None:
            self.args, self.polls, self.closed = args, 0, False
            made.append(self)

        def poll(self) -> None:
            self.polls += 1

        def close(self) -> None:
            self.closed = True

    def factory(adapt, deterministic, device_type, threads):
        return Governor(adapt, deterministic, device_type, threads) if adapt else None

    monkeypatch.setattr(loop_module, "thread_governor", factory)
    train(make_cfg(tmp_path / "run", "trainer.deterministic=false"), toy_build)
    (g,) = made
    assert g.args == (True, False, "cpu", torch.get_num_threads())
    assert g.polls == 8 and g.closed  # 64 jets / 16 per batch x 2 epochs
    train(make_cfg(tmp_path / "off", "trainer.adapt_threads=false"), toy_build)
    assert len(made) == 1
