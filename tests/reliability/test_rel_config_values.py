"""Config values that are wrong without looking wrong (issue 14, part 5).

Every enumerated or ranged key is checked when the config is composed, before any data is
read (``saltx.config.validate``, run by ``train()`` and by evaluation/export on the run's
config), and the error names the key, the value and what is allowed. ``trainer.monitor``
and ``optimized_metric`` must be metrics the loop logs for the configured tasks (derived
from ``model.tasks``, not from a hand list).
"""

from __future__ import annotations

import re
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import outcome
from relhelp import CONF_DIR, compose_train, write_tiny_data
from test_rel_hostile_h5 import _record

from saltx.config import ConfigError, logged_metrics, validate

FUZZ = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    data = write_tiny_data(tmp_path_factory.mktemp("valdata"), {"train": 64, "val": 32, "test": 32})
    return SimpleNamespace(data=data, out=tmp_path_factory.mktemp("valrun") / "run")


def check(env: SimpleNamespace, overrides: tuple[str, ...], pattern: str | None) -> None:
    """Compose with ``overrides`` and validate: a ConfigError matching ``pattern`` (None: ok)."""
    result = outcome(lambda: validate(compose_train(env.data, env.out, *overrides)))
    _record(f"config value: {' '.join(overrides)}", result)
    kind, message = result
    if pattern is None:
        assert kind == "ok", f"{overrides}: {kind}: {message}"
        return
    assert kind == "ConfigError", f"{overrides}: {kind}: {message}"
    assert re.search(pattern, message), f"{overrides}: {pattern!r} not in: {message}"


# (override, pattern the message must match: the key, the value and what is allowed)
BAD = [
    ("trainer.monitor_mode=minimize", r"trainer\.monitor_mode='minimize'.*min or max"),
    ("trainer.monitor_mode=MAX", r"trainer\.monitor_mode='MAX'.*min or max"),
    ("trainer.devices=0", r"trainer\.devices=0.*integer >= 1"),
    ("trainer.devices=-2", r"trainer\.devices=-2.*integer >= 1"),
    ("trainer.num_nodes=0", r"trainer\.num_nodes=0"),
    ("trainer.checkpoint_every_n_steps=-1", r"trainer\.checkpoint_every_n_steps=-1.*>= 0"),
    ("trainer.log_every_n_steps=0", r"trainer\.log_every_n_steps=0.*>= 1"),
    ("trainer.val_check_interval=0", r"trainer\.val_check_interval=0.*>= 1 or null"),
    ("trainer.limit_val_batches=0", r"trainer\.limit_val_batches=0.*>= 1 or -1"),
    ("trainer.accumulate_grad_batches=0", r"trainer\.accumulate_grad_batches=0"),
    ("trainer.max_epochs=0", r"trainer\.max_epochs=0.*>= 1 or -1"),
    ("trainer.max_steps=0", r"trainer\.max_steps=0.*>= 1 or -1"),
    ("trainer.max_epochs=-1", r"never end"),  # with max_steps=-1 (the default)
    ("trainer.gradient_clip_val=-1.0", r"trainer\.gradient_clip_val=-1\.0.*>= 0"),
    ("trainer.gradient_clip_val=nan", r"trainer\.gradient_clip_val=nan.*finite"),
    ("trainer.precision=64", r"trainer\.precision='64'.*32, bf16, fp16"),
    ("trainer.accelerator=tpu", r"trainer\.accelerator='tpu'.*cpu, gpu or auto"),
    ("trainer.resume=sometimes", r"trainer\.resume='sometimes'.*auto or never"),
    ("trainer.compile_mode=fast", r"trainer\.compile_mode='fast'.*max-autotune"),
    ("trainer.compile=true trainer.compile_backend=fast", r"compile_backend='fast'.*inductor"),
    ("trainer.ddp_timeout_s=0", r"trainer\.ddp_timeout_s=0"),
    ("trainer.num_threads=0", r"trainer\.num_threads=0"),
    ("trainer.peak_tflops=-5.0", r"trainer\.peak_tflops=-5\.0"),
    ("trainer.monitor=val/acc", r"trainer\.monitor='val/acc' is never logged.*val/loss"),
    ("trainer.monitor=val/jet_classification_los", r"trainer\.monitor=.*never logged"),
    ("optimized_metric=val/auc", r"optimized_metric='val/auc' is never logged"),
    ("lrs.max=-0.001", r"lrs\.max=-0\.001.*finite learning rate > 0"),
    ("lrs.max=nan", r"lrs\.max=nan.*finite learning rate > 0"),
    ("lrs.max=0.0", r"lrs\.max=0\.0"),
    ("lrs.max=inf", r"lrs\.max=inf"),
    ("lrs.initial=-1e-07", r"lrs\.initial=-1e-07.*>= 0"),
    ("lrs.end=nan", r"lrs\.end=nan"),
    ("lrs.pct_start=1.5", r"lrs\.pct_start=1\.5.*\(0, 1\)"),
    ("lrs.pct_start=0.0", r"lrs\.pct_start=0\.0"),
    ("lrs.weight_decay=-0.1", r"lrs\.weight_decay=-0\.1"),
    ("lrs.total_steps=0", r"lrs\.total_steps=0"),
    ("lrs.base_momentum=1.5", r"lrs\.base_momentum=1\.5.*\[0, 1\]"),
    ("data.batch_size=0", r"data\.batch_size=0.*>= 1"),
    ("data.num_workers=-1", r"data\.num_workers=-1.*>= 0"),
    ("data.num_train=0", r"data\.num_train=0.*>= 1 or -1"),
    ("data.num_val=-2", r"data\.num_val=-2"),
    ("data.prefetch_factor=0", r"data\.prefetch_factor=0"),
    ("data.read_threads=0", r"data\.read_threads=0"),
    ("data.shuffle_buffer=-1", r"data\.shuffle_buffer=-1"),
    ("+data.num_inputs.tracks=0", r"data\.num_inputs\.tracks=0"),
    ("+model.tasks.jet_classification.class_weights=[1,-1,1,1]", r"class_weights.*>= 0"),
    ("+model.tasks.jet_classification.class_weights=[1,nan,1,1]", r"class_weights.*finite"),
    ("+model.tasks.jet_classification.class_weights=[1,abc,1,1]", r"class_weights.*numbers"),
    ("+model.tasks.jet_classification.class_names=[bjets]", r"class_names.*at least two"),
    ("+model.tasks.jet_classification.class_names=[b,b,c,u]", r"class_names.*distinct"),
    ("model.tasks.track_origin.weight=-1.0", r"track_origin\.weight=-1\.0.*>= 0"),
]


@pytest.mark.parametrize(("override", "pattern"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_the_key_and_the_allowed_values(
    env: SimpleNamespace, override: str, pattern: str
) -> None:
    check(env, tuple(override.split()), pattern)


@pytest.mark.parametrize(
    "overrides",
    [
        ("trainer.monitor=val/jet_classification_loss", "trainer.monitor_mode=max"),
        ("trainer.monitor=train/loss",),
        ("trainer.max_epochs=-1", "trainer.max_steps=5"),
        ("trainer.checkpoint_every_n_steps=0", "trainer.val_check_interval=null"),
        ("trainer.precision=bf16-mixed", "trainer.compile_mode=max-autotune"),
        ("+model.tasks.jet_classification.class_weights=[1,0,2,3]",),  # zero: a warning
    ],
)
def test_good_values_pass(env: SimpleNamespace, overrides: tuple[str, ...]) -> None:
    zero_weight = "[1,0,2,3]" in overrides[0]
    with pytest.warns(UserWarning, match="zero weight") if zero_weight else nullcontext():
        check(env, overrides, None)


def test_monitor_keys_follow_the_configured_tasks(env: SimpleNamespace) -> None:
    """The allowed monitor keys come from model.tasks: drop a task and its loss is gone."""
    cfg = compose_train(env.data, env.out)
    keys = logged_metrics(cfg)
    for task in cfg.model.tasks:
        assert {f"val/{task}_loss", f"train/{task}_loss"} <= keys
    assert {"val/loss", "train/loss", "train/lr"} <= keys
    check(env, ("trainer.monitor=val/track_vertexing_loss",), None)
    check(
        env,
        ("~model.tasks.track_vertexing", "trainer.monitor=val/track_vertexing_loss"),
        r"never logged",
    )


@FUZZ
@given(
    key=st.sampled_from(
        ["devices", "num_nodes", "log_every_n_steps", "accumulate_grad_batches", "ddp_timeout_s"]
    ),
    value=st.integers(-(10**6), 0),
)
def test_fuzz_non_positive_trainer_counts(env: SimpleNamespace, key: str, value: int) -> None:
    check(env, (f"trainer.{key}={value}",), rf"trainer\.{key}={value}.*>= 1")


def test_checked_before_any_data_is_read(env: SimpleNamespace, tmp_path: Path) -> None:
    """train() refuses a bad value before it opens a file or downloads anything."""
    from saltx.train import train

    cfg = compose_train(
        env.data, tmp_path / "run", "data.train_file=/nonexistent/train.h5", "trainer.devices=0"
    )
    kind, message = outcome(lambda: train(cfg))
    assert kind == "ConfigError" and "trainer.devices=0" in message, (kind, message)
    assert not (tmp_path / "run").exists(), "the run directory was created before the check"


@pytest.mark.parametrize(
    ("entry", "override", "pattern"),
    [
        ("evaluate", "device=gpu0", r"device='gpu0'.*cpu, cuda"),
        ("evaluate", "f_c=1.5", r"f_c=1\.5.*\[0, 1\]"),
        ("evaluate", "working_points=[0.7,1.2]", r"working_points=.*\(0, 1\)"),
        ("evaluate", "batch_size=0", r"batch_size=0"),
        ("evaluate", "data.num_test=0", r"data\.num_test=0"),
        ("export", "validate.trials=0", r"validate\.trials=0"),
    ],
)
def test_evaluate_and_export_keys(entry: str, override: str, pattern: str) -> None:
    from hydra import compose, initialize_config_dir

    from saltx.config import validate_evaluate, validate_export

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(entry, overrides=["run_dir=/nonexistent", override])
    fn = validate_evaluate if entry == "evaluate" else validate_export
    result = outcome(lambda: fn(cfg))
    _record(f"config value: {entry} {override}", result)
    assert result[0] == "ConfigError" and re.search(pattern, result[1]), result


def test_config_error_is_a_value_error() -> None:
    """Callers that catch ValueError (Hydra's sweeper, tests) keep working."""
    assert issubclass(ConfigError, ValueError)
