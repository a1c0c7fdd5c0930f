"""Search spaces in Hydra's override grammar -> Optuna distributions and trial overrides."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from saltx.hpo.space import format_value, load_custom_search_space, parse_search_space


def test_each_expression_maps_to_its_distribution():
    space = parse_search_space(
        {
            "lrs.max": "tag(log, interval(1e-4, 1e-2))",
            "model.dropout": "interval(0, 0.3)",
            "model.encoder.num_layers": "range(2, 9, 2)",
            "data.batch_size": "choice(500, 1000)",
            "model.depth": "tag(int, interval(1, 6))",
            "+extra.width": "tag(log, range(8, 65))",
            "trainer.max_epochs": 3,
        }
    )
    d = space.distributions
    assert d["lrs.max"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.dropout"] == FloatDistribution(0.0, 0.3)
    # Hydra's range excludes its stop, like Python's: 2, 4, 6, 8
    assert d["model.encoder.num_layers"] == IntDistribution(2, 8, step=2)
    assert space.params["model.encoder.num_layers"].grid == [2, 4, 6, 8]
    assert d["data.batch_size"] == CategoricalDistribution([500, 1000])
    assert d["model.depth"] == IntDistribution(1, 6)
    assert d["extra.width"] == IntDistribution(8, 64, log=True)
    assert space.params["extra.width"].key == "+extra.width"
    assert space.fixed == ["trainer.max_epochs=3"]


def test_float_range_and_command_line_merge():
    space = parse_search_space(
        {"a": "range(0.0, 1.0, 0.25)", "b": "choice(x, y)"},
        ["b=interval(0, 1)", "c=7", "hparams_search=demo"],
    )
    assert space.params["a"].grid == [0.0, 0.25, 0.5, 0.75]
    # a sweep on the command line replaces the configured one; plain overrides stay fixed
    assert space.distributions["b"] == FloatDistribution(0.0, 1.0)
    assert space.fixed == ["c=7", "hparams_search=demo"]
    # a plain command-line value replaces a searched key
    assert "a" not in parse_search_space({"a": "interval(0, 1)"}, ["a=0.5"]).params


def test_overrides_round_trip_through_hydras_parser():
    space = parse_search_space(
        {
            "s": "choice(adam, '1', 'true', 'a b')",
            "l": "choice([1, 2], [3])",
            "n": "choice(true, 2)",
        }
    )
    parser = OverridesParser.create()
    for s in ["adam", "1", "true", "a b"]:
        for lst in space.params["l"].distribution.choices:
            for n in [True, 2]:
                ovs = space.overrides({"s": s, "l": lst, "n": n})
                parsed = {o.key_or_group: o.value() for o in parser.parse_overrides(ovs)}
                assert parsed["s"] == s and isinstance(parsed["s"], str)
                assert parsed["l"] in ([1, 2], [3])
                assert parsed["n"] == n


def test_format_value():
    assert format_value(1e-5) == "1e-05"
    assert format_value(False) == "false"
    assert format_value({"a": [1, "x"]}) == "{a: [1, x]}"
    assert format_value("it's") == "'it\\'s'"


def test_grid_needs_discrete_values():
    space = parse_search_space({"a": "choice(1, 2)", "b": "range(3)"})
    assert space.grid() == {"a": [1, 2], "b": [0, 1, 2]}
    with pytest.raises(ValueError, match="'c' is a continuous interval"):
        parse_search_space({"c": "interval(0, 1)"}).grid()


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("range(5, 1)", "has no values"),
        ("tag(log, interval(0, 1))", "needs low > 0"),
        ("tag(log, range(1, 10, 2))", "needs step 1"),
        ("interval(2, 1)", "low 2.0 > high 1.0"),
    ],
)
def test_bad_expressions_name_the_key(expr, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_search_space({"model.x": expr})
    assert "model.x" in str(err.value)


def test_custom_search_space_loader():
    assert load_custom_search_space("os.path.join") is not None
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_custom_search_space("os.path.nope")
    with pytest.raises(ValueError, match=r"module\.function"):
        load_custom_search_space("join")
