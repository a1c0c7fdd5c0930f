"""InputNorm: buffers from the norm dict, GLOBAL from the global object, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from saltx.models.inputnorm import InputNorm

NORM = {
    "jets": {"pt": {"mean": 10.0, "std": 2.0}, "eta": {"mean": 0.0, "std": 1.5}},
    "tracks": {"d0": {"mean": 1.0, "std": 4.0}},
    "electrons": {"pt": {"mean": 3.0, "std": 0.5}},
}


def test_normalises_and_skips_edge_and_parameters():
    variables = {
        "jets": ["pt", "eta"],
        "tracks": ["d0"],
        "GLOBAL": ["eta"],
        "PARAMETERS": ["mass_param"],
        "EDGE": ["dR"],
    }
    norm = InputNorm(NORM, variables)
    assert set(dict(norm.named_buffers())) == {
        "jets_means",
        "jets_stds",
        "tracks_means",
        "tracks_stds",
        "GLOBAL_means",
        "GLOBAL_stds",
    }
    inputs = {
        "jets": torch.tensor([[12.0, 3.0]]),
        "tracks": torch.tensor([[[5.0], [1.0]]]),
        "GLOBAL": torch.tensor([[1.5]]),
        "PARAMETERS": torch.tensor([[40.0]]),
        "EDGE": torch.zeros(1, 2, 4),
    }
    out = norm(inputs)
    torch.testing.assert_close(out["jets"], torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(out["tracks"], torch.tensor([[[1.0], [0.0]]]))
    torch.testing.assert_close(out["GLOBAL"], torch.tensor([[1.0]]))
    assert out["PARAMETERS"] is inputs["PARAMETERS"]
    assert out["EDGE"] is inputs["EDGE"]
    assert inputs["jets"][0, 0] == 12.0  # caller's dict untouched


def test_input_map_selects_dataset():
    norm = InputNorm(NORM, {"jets": ["pt"], "leptons": ["pt"]}, input_map={"leptons": "electrons"})
    torch.testing.assert_close(norm.leptons_means, torch.tensor([3.0]))


def test_missing_variable_names_dataset_and_variable():
    with pytest.raises(KeyError, match=r"norm_dict\['tracks'\].*'z0'"):
        InputNorm(NORM, {"jets": ["pt"], "tracks": ["d0", "z0"]})
    with pytest.raises(KeyError, match="hits"):
        InputNorm(NORM, {"jets": ["pt"], "hits": ["x"]})


@pytest.mark.parametrize(
    ("entry", "match"),
    [({"mean": math.nan, "std": 1.0}, "non-finite"), ({"mean": 0.0, "std": 0.0}, "std == 0")],
)
def test_bad_statistics(entry, match):
    bad = {"jets": {"pt": entry}}
    with pytest.raises(ValueError, match=match):
        InputNorm(bad, {"jets": ["pt"]})


def test_wrong_feature_count():
    norm = InputNorm(NORM, {"jets": ["pt", "eta"]})
    with pytest.raises(ValueError, match="expected 2"):
        norm({"jets": torch.zeros(1, 3)})
