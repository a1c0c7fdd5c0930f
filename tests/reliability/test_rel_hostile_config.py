"""Config fuzz: unknown keys, wrong types, bad sizes and inconsistent task settings give a
clear error naming the key (at compose time or when the run is built), never a crash deep
in torch."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import Consumer, outcome
from relhelp import compose_train, write_tiny_data

FUZZ = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
)
CLEAR = (
    "DataError",
    "ValueError",
    "KeyError",
    "ConfigCompositionException",
    "ValidationError",
    "ConfigKeyError",
    "InstantiationException",
    "ConfigError",  # saltx.config.validate: ranges and allowed values
    "TargetError",  # saltx.targets: a _target_ that is not allowed
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    data = write_tiny_data(tmp_path_factory.mktemp("cfgdata"), {"train": 64, "val": 32, "test": 32})
    return SimpleNamespace(data=data, out=tmp_path_factory.mktemp("cfgrun") / "run")


def attempt(env: SimpleNamespace, *overrides: str) -> tuple[str, str]:
    """Compose with ``overrides``, build the run and push every training batch through."""

    def go() -> None:
        cfg = compose_train(env.data, env.out, "data.batch_size=16", *overrides)
        Consumer(cfg)(Path(cfg.data.train_file))

    return outcome(go)


def check(case: str, result: tuple[str, str], pattern: str) -> None:
    from test_rel_hostile_h5 import _record

    _record(f"config: {case}", result)
    kind, message = result
    assert kind != "ok", f"{case}: accepted, expected an error matching {pattern!r}"
    assert kind in CLEAR, f"{case}: {kind}: {message}"
    assert re.search(pattern, message, re.S), f"{case}: {pattern!r} not in: {message}"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.bach_size=10", "bach_size"),
        ("trainer.max_step=5", "max_step"),
        ("model.embd_dim=16", "embd_dim"),
        ("data.variables.trakcs=[d0]", r"trakcs"),
        ("optimizer.lrr=0.1", "lrr"),
    ],
)
def test_unknown_keys(env: SimpleNamespace, override: str, key: str) -> None:
    check(f"unknown key {override}", attempt(env, override), key)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=abc", r"data\.batch_size"),
        ("trainer.max_epochs=1.5", r"trainer\.max_epochs"),
        ("trainer.deterministic=maybe", r"trainer\.deterministic"),
        ("model.embed_dim=[16]", r"model\.embed_dim"),
        ("data.num_inputs.tracks=many", r"num_inputs"),
    ],
)
def test_wrong_types_and_values(env: SimpleNamespace, override: str, key: str) -> None:
    check(f"wrong type {override}", attempt(env, override), key)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.precision=64", r"precision"),
        ("trainer.accelerator=tpu", r"trainer\.accelerator"),
        ("trainer.resume=sometimes", r"trainer\.resume"),
    ],
)
def test_trainer_values_checked_when_the_run_starts(
    env: SimpleNamespace, override: str, key: str, tmp_path: Path
) -> None:
    from saltx.train import train

    cfg = compose_train(env.data, tmp_path / "run", "trainer.max_steps=1", override)
    check(f"bad value {override}", outcome(lambda: train(cfg)), key)


@FUZZ
@given(size=st.integers(-(10**6), 0))
def test_fuzz_non_positive_batch_size(env: SimpleNamespace, size: int) -> None:
    check(f"data.batch_size={size}", attempt(env, f"data.batch_size={size}"), r"batch_size")


@FUZZ
@given(key=st.sampled_from(["embed_dim", "num_heads", "out_dim"]), size=st.integers(-64, 0))
def test_fuzz_non_positive_model_sizes(env: SimpleNamespace, key: str, size: int) -> None:
    result = attempt(env, f"model.{key}={size}")
    if key == "out_dim" and size == 0:  # out_dim 0 means "no output projection"
        assert result[0] == "ok", result
        return
    check(f"model.{key}={size}", result, rf"{key}")


@FUZZ
@given(width=st.sampled_from([12, 16, 20]), heads=st.integers(3, 7))
def test_fuzz_heads_that_do_not_divide_the_width(
    env: SimpleNamespace, width: int, heads: int
) -> None:
    result = attempt(env, f"model.embed_dim={width}", f"model.num_heads={heads}")
    if width % heads == 0:
        assert result[0] == "ok", result
        return
    check(f"embed_dim={width} num_heads={heads}", result, r"num_heads|heads")


def test_label_map_without_class_names(env: SimpleNamespace) -> None:
    result = attempt(env, "+model.tasks.track_origin.label_map={0: 1, 1: 0}")
    check("label_map without class_names", result, r"track_origin.*label_map.*class_names")


@pytest.mark.parametrize("names", [["b", "c", "u"], ["b", "c", "u", "tau", "extra"], []])
def test_class_names_of_the_wrong_length(env: SimpleNamespace, names: list[str]) -> None:
    listed = "[" + ",".join(names) + "]"
    result = attempt(
        env,
        f"model.tasks.jet_classification.class_names={listed}",
        "model.tasks.jet_classification.use_class_dict=false",
    )
    if len(names) == 5:  # more classes than labels in the file: a valid (wasteful) setup
        assert result[0] == "ok", result
        return
    check(f"class_names={listed}", result, r"jet_classification.*(class_names|classes|label)")


def test_class_names_vs_class_dict_weights(env: SimpleNamespace) -> None:
    result = attempt(env, "model.tasks.jet_classification.class_names=[b,c,u]")
    check("3 class_names, 4 class-dict weights", result, r"jet_classification.*class")


def test_missing_data_files(env: SimpleNamespace) -> None:
    result = attempt(env, "data.val_file=/nonexistent/val.h5")
    check("data.val_file missing", result, r"/nonexistent/val\.h5")
    result = attempt(env, "data.norm_dict=/nonexistent/norm.yaml")
    check("data.norm_dict missing", result, r"/nonexistent/norm\.yaml")


def test_ckpt_path_that_does_not_exist(env: SimpleNamespace, tmp_path: Path) -> None:
    from saltx.train import train

    cfg = compose_train(env.data, tmp_path / "run", "ckpt_path=/nonexistent/best.pt")
    kind, message = outcome(lambda: train(cfg))
    assert kind == "FileNotFoundError" and "/nonexistent/best.pt" in message, (kind, message)
