"""One place for every default: the config group files state the schema's defaults.

The schema dataclasses (``saltx.config``) hold the defaults that code relies on (configs
built without Hydra, run configs of older versions); the default option of each group
states them for users to read. This test keeps the two from drifting apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from saltx import config

CONF = Path(config.__file__).resolve().parent / "conf"
GROUP_DEFAULTS = [
    ("train.yaml", None, config.TrainConfig),
    ("trainer/default.yaml", "trainer", config.TrainerConfig),
    ("lrs/default.yaml", "lrs", config.LRSConfig),
    ("data/default.yaml", "data", config.DataConfig),
    ("logger/none.yaml", "logger", config.LoggerConfig),
    ("logger/wandb.yaml", "logger", config.LoggerConfig),
]


def differences(file: str, schema: type) -> dict[str, tuple]:
    """``{key: (file value, schema default)}`` for keys both set, interpolations aside."""
    stated = OmegaConf.to_container(OmegaConf.load(CONF / file))
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    out = {}
    for key, value in stated.items():
        if key == "defaults" or key not in defaults or (isinstance(value, str) and "${" in value):
            continue
        if key == "name" and schema is config.LoggerConfig:
            continue  # each logger file names its own option
        if value != defaults[key]:
            out[key] = (value, defaults[key])
    return out


@pytest.mark.parametrize(("file", "node", "schema"), GROUP_DEFAULTS)
def test_group_files_state_the_schema_defaults(file, node, schema):
    assert differences(file, schema) == {}


def test_every_schema_key_of_a_default_group_is_stated():
    for file, node, schema in GROUP_DEFAULTS:
        if node in ("trainer", "lrs"):  # these files list every key, with its meaning
            stated = OmegaConf.load(CONF / file)
            assert set(OmegaConf.structured(schema)) <= set(stated), file


def test_train_yaml_selects_the_lrs_group():
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml"))["defaults"]
    assert {"lrs": "default"} in defaults
