"""InputNorm: buffers from the norm dict, GLOBAL from the global object, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from saltx.errors import DataError
from saltx.models.inputnorm import InputNorm, norm_stats

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
    with pytest.raises(DataError, match=r"norm_dict\['tracks'\].*'z0'"):
        InputNorm(NORM, {"jets": ["pt"], "tracks": ["d0", "z0"]})
    with pytest.raises(DataError, match="hits"):
        InputNorm(NORM, {"jets": ["pt"], "hits": ["x"]})


@pytest.mark.parametrize(
    ("entry", "match"),
    [({"mean": math.nan, "std": 1.0}, "non-finite"), ({"mean": 0.0, "std": 0.0}, "std == 0")],
)
def test_bad_statistics(entry, match):
    bad = {"jets": {"pt": entry}}
    with pytest.raises(DataError, match=match):
        InputNorm(bad, {"jets": ["pt"]})


def test_wrong_feature_count():
    norm = InputNorm(NORM, {"jets": ["pt", "eta"]})
    with pytest.raises(ValueError, match="expected 2"):
        norm({"jets": torch.zeros(1, 3)})


# norm_stats: the one rule for norm dicts (InputNorm's buffers come from it)
VARS = {"jets": ["pt_btagJes"], "tracks": ["d0", "pt"], "GLOBAL": ["eta_btagJes"]}
GOOD = {
    "jets": {"pt_btagJes": {"mean": 1.0, "std": 2.0}, "eta_btagJes": {"mean": 0, "std": 1}},
    "tracks": {"d0": {"mean": 0.0, "std": 1.0}, "pt": {"mean": 5.0, "std": 3.0}},
}


def test_norm_stats_in_variable_order_skipping_special_inputs():
    variables = {**VARS, "PARAMETERS": ["mass"], "EDGE": ["dR"]}
    stats = norm_stats(GOOD, variables, global_object="jets")
    assert stats == {
        "jets": ([1.0], [2.0]),
        "tracks": ([0.0, 5.0], [1.0, 3.0]),
        "GLOBAL": ([0.0], [1.0]),  # the global object's entries
    }


@pytest.mark.parametrize(
    ("dataset", "var", "entry", "message"),
    [
        ("tracks", "pt", None, r"norm_dict\['tracks'\] has no entry for variable 'pt'"),
        ("tracks", "pt", {"mean": 0.0}, r"\['tracks'\]\['pt'\] must be a mapping with 'mean'"),
        ("tracks", "pt", {"mean": "abc", "std": 1}, r"\['pt'\] must be a mapping .*'abc'"),
        ("tracks", "pt", {"mean": 0.0, "std": 0.0}, r"\['tracks'\]\['pt'\] has std == 0"),
        ("tracks", "pt", {"mean": math.nan, "std": 1.0}, r"\['tracks'\]\['pt'\].*mean=nan"),
        ("jets", "eta_btagJes", {"mean": 0, "std": math.inf}, r"\['jets'\]\['eta_btagJes'\]"),
    ],
)
def test_norm_stats_errors(dataset, var, entry, message):
    broken = {k: dict(v) for k, v in GOOD.items()}
    if entry is None:
        del broken[dataset][var]
    else:
        broken[dataset][var] = entry
    with pytest.raises(DataError, match=message):
        norm_stats(broken, VARS)


def test_norm_stats_missing_dataset_and_input_map():
    with pytest.raises(DataError, match=r"no entry for dataset 'electrons'.*input 'electrons'"):
        norm_stats(GOOD, {**VARS, "electrons": ["pt"]})
    assert norm_stats(GOOD, {"trk": ["d0"]}, input_map={"trk": "tracks"}) == {"trk": ([0.0], [1.0])}
    # GLOBAL follows the global object through input_map
    moved = {"jets_v2": GOOD["jets"]}
    stats = norm_stats(moved, {"GLOBAL": ["eta_btagJes"]}, input_map={"jets": "jets_v2"})
    assert stats == {"GLOBAL": ([0.0], [1.0])}
