"""Coordinate check: muP keeps activation sizes width-independent, SP does not."""

from __future__ import annotations

import json

from saltx.mup.coord_check import (
    coord_check,
    main,
    split_args,
    summary_table,
    width_growth,
    write_results,
)
from saltx.mup.shapes import compose_train

WIDTHS = [32, 64, 128]


def width_spread(result, param: str) -> dict[str, float]:
    """``{layer: max/min over widths}`` of the activation size after the last step."""
    out = {}
    for layer, by_width in result["sizes"][param].items():
        values = [v[-1] for v in by_width.values()]
        out[layer] = float("inf") if min(values) <= 0 else max(values) / min(values)
    return out


def tiny(data_dir, *extra: str) -> list[str]:
    return [
        "experiment=gn2_mup",
        f"paths.data_dir={data_dir}",
        "model.num_heads=4",
        "model.out_dim=16",
        "model.encoder.num_layers=2",
        "mup.embed_dim.parameter_base=32",
        "mup.embed_dim.parameter_delta=64",
        "+data.num_inputs.tracks=10",
        *extra,
    ]


def test_short_keys_map_to_the_mup_block():
    assert split_args(["widths=[8,16]", "steps=2", "model.dropout=0.1"]) == [
        "mup.coord_check.widths=[8,16]",
        "mup.coord_check.steps=2",
        "model.dropout=0.1",
    ]


def test_mup_activations_stay_width_independent_and_sp_grows(synthetic_dir, tmp_path):
    cfg = compose_train(tiny(synthetic_dir))
    result = coord_check(cfg, WIDTHS, steps=4, lr=0.01, batch_size=32, seeds=2)
    assert result["layers"][:3] == ["init_nets.tracks", "encoder.layers.0", "encoder.layers.1"]
    assert "encoder.final_linear" in result["layers"]
    for param in ("muP", "SP"):
        for layer in result["layers"]:
            assert set(result["sizes"][param][layer]) == {str(w) for w in WIDTHS}
            assert all(len(v) == 5 for v in result["sizes"][param][layer].values())
    mup_spread = width_spread(result, "muP")
    sp_growth = width_growth(result, "SP")
    # after a few steps at a large lr: muP within a factor 2 across widths, for every layer
    assert max(mup_spread.values()) < 2.0, mup_spread
    # SP: the residual stream grows with the width (x4 width -> clearly larger)
    assert min(sp_growth[f"encoder.layers.{i}"] for i in range(2)) > 1.8, sp_growth
    assert max(sp_growth.values()) > max(width_growth(result, "muP").values())
    json_path, png_path = write_results(result, tmp_path / "cc")
    assert json.loads(json_path.read_text())["widths"] == WIDTHS
    assert png_path.stat().st_size > 1000
    assert "SP growth" in summary_table(result)


def test_command_line_writes_json_and_png(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny(synthetic_dir, "model.encoder.num_layers=1")
    assert (
        main([*args, "widths=[16,32]", "steps=1", "seeds=1", "batch_size=8", f"out_dir={out}"]) == 0
    )
    data = json.loads((out / "coord_check.json").read_text())
    assert data["widths"] == [16, 32] and data["steps"] == 1
    assert set(data["sizes"]) == {"muP", "SP"}
    assert (out / "coord_check.png").is_file()
    assert "wrote" in capsys.readouterr().out
