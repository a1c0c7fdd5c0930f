"""Classification and regression tasks: label maps, class weights, padding, NaN targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saltx.data.batch import Batch
from saltx.models.tasks import ClassificationTask, RegressionTask, remap_labels


def test_label_map_swap_is_not_sequential():
    y = torch.tensor([0, 1, 1, 0, 2])
    out = remap_labels(y, {0: 1, 1: 0, 2: 2})
    torch.testing.assert_close(out, torch.tensor([1, 0, 0, 1, 2]))
    assert y.tolist() == [0, 1, 1, 0, 2]  # not modified in place


def test_label_map_raw_values_2d_and_padding():
    y = torch.tensor([[5, 4, 0], [15, 5, -1]])
    out = remap_labels(y, {5: 0, 4: 1, 0: 2, 15: 3})
    assert out.tolist() == [[0, 1, 2], [3, 0, -1]]
    assert remap_labels(torch.tensor([-2, -1, 15]), {15: 3}).tolist() == [-2, -1, 3]
    assert remap_labels(torch.tensor([-1]), {-1: 4}).tolist() == [4]  # mapped explicitly


def test_label_map_matches_naive_reference():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randperm(50, generator=gen)[:10]
    mapping = {int(k): int(v) for k, v in zip(keys, torch.randperm(10, generator=gen))}
    pool = torch.cat([keys, torch.tensor([-1, -2])])
    values = pool[torch.randint(0, len(pool), (200,), generator=gen)]
    expected = [mapping.get(v, v) for v in values.tolist()]
    assert remap_labels(values, mapping).tolist() == expected


def test_unmapped_label_is_an_error_naming_value_task_and_key():
    task = ClassificationTask(
        "jc", "jets", 4, label="HadronConeExclTruthLabelID", class_names=["b", "c", "u"],
        label_map={5: 0, 4: 1, 0: 2},
    )  # fmt: skip
    x = torch.randn(4, 4)
    msg = (
        r"task 'jc': label 'HadronConeExclTruthLabelID' of 'jets' has values \[1, 15\] that "
        r"are not in model.tasks.jc.label_map \{5: 0, 4: 1, 0: 2\}"
    )
    with pytest.raises(ValueError, match=msg):  # 1 is a valid class index: still an error
        task(x, {"HadronConeExclTruthLabelID": torch.tensor([5, 15, 1, 0])})
    with pytest.raises(ValueError, match=r"model\.tasks\.jc\.label_map is empty"):
        ClassificationTask("jc", "jets", 4, label="l", class_names=["b"], label_map={})


def test_unmapped_labels_of_padded_constituents_are_ignored():
    task = ClassificationTask(
        "to", "tracks", 5, label="o", class_names=list("ab"), context_size=2,
        label_map={3: 0, 4: 1},
    )  # fmt: skip
    x, ctx = torch.randn(1, 4, 5), torch.randn(1, 2)
    mask = torch.tensor([[False, False, False, True]])
    labels = torch.tensor([[3, 4, -2, 99]])  # -2 ignored, 99 in a padded slot
    assert task.class_targets({"o": labels}, mask).tolist() == [[0, 1, -1, -1]]
    task(x, {"o": labels}, mask, ctx)
    with pytest.raises(ValueError, match=r"has values \[99\]"):
        task.class_targets({"o": labels}, torch.zeros_like(mask))


def test_label_map_requires_class_names():
    with pytest.raises(ValueError, match="label_map requires class_names"):
        ClassificationTask("jc", "jets", 4, label="HadronConeExclTruthLabelID", label_map={0: 1})


def test_class_names_must_match_output_size():
    with pytest.raises(ValueError, match="output_size=4 but 3 class_names"):
        ClassificationTask(
            "jc", "jets", 4, label="flavour_label", class_names=["b", "c", "u"], output_size=4
        )
    with pytest.raises(ValueError, match="no class_names"):
        ClassificationTask("jc", "jets", 4, label="flavour_label")
    with pytest.raises(ValueError, match="3 class weights for 2"):
        ClassificationTask(
            "jc", "jets", 4, label="l", class_names=["a", "b"], class_weights=[1, 2, 3]
        )


def test_origin_class_names_default():
    task = ClassificationTask("to", "tracks", 8, label="ftagTruthOriginLabel", context_size=4)
    assert len(task.class_names) == 8 and task.class_names[3] == "FromB"


def test_jet_loss_weighted_mean_and_weight():
    torch.manual_seed(0)
    cw = [1.0, 2.0, 16.8]
    task = ClassificationTask(
        "jc", "jets", 6, label="y", class_names=["b", "c", "u"], class_weights=cw, weight=0.5
    )
    x = torch.randn(7, 6)
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    preds, loss = task(x, {"y": y})
    assert preds.shape == (7, 3)
    expected = F.cross_entropy(preds, y, weight=torch.tensor(cw))
    torch.testing.assert_close(loss, 0.5 * expected)


def test_jet_label_map_applied_in_loss():
    torch.manual_seed(0)
    task = ClassificationTask(
        "jc", "jets", 4, label="id", class_names=["b", "c", "u"], label_map={5: 0, 4: 1, 0: 2}
    )
    x = torch.randn(3, 4)
    preds, loss = task(x, {"id": torch.tensor([5, 4, 0])})
    torch.testing.assert_close(loss, F.cross_entropy(preds, torch.tensor([0, 1, 2])))


def test_constituent_padding_and_minus_two_ignored():
    torch.manual_seed(0)
    task = ClassificationTask(
        "to", "tracks", 5, label="o", class_names=list("abcd"), context_size=2
    )
    x, ctx = torch.randn(2, 4, 5), torch.randn(2, 2)
    mask = torch.tensor([[False, False, False, True], [False, False, True, True]])
    o = torch.tensor([[0, -2, 3, 1], [2, 1, 0, 3]])
    preds, loss = task(x, {"o": o}, mask=mask, context=ctx)
    assert preds.shape == (2, 4, 4)
    keep = torch.tensor([[True, False, True, False], [True, True, False, False]])
    expected = F.cross_entropy(preds[keep], o[keep])
    torch.testing.assert_close(loss, expected)
    # all padded: zero loss, no NaN
    _, loss0 = task(x, {"o": o}, mask=torch.ones_like(mask), context=ctx)
    assert loss0.item() == 0.0


def test_sample_weight():
    torch.manual_seed(0)
    task = ClassificationTask("jc", "jets", 3, label="y", class_names=["a", "b"], sample_weight="w")
    x, y, w = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.tensor([1.0, 2.0, 0.5, 0.0])
    preds, loss = task(x, {"y": y, "w": w})
    torch.testing.assert_close(loss, (F.cross_entropy(preds, y, reduction="none") * w).mean())
    assert task.labels_needed() == ["y", "w"]


def test_predict_probs_zero_on_padding():
    task = ClassificationTask("to", "tracks", 3, label="o", class_names=["a", "b"])
    logits = torch.randn(2, 3, 2)
    mask = torch.tensor([[False, True, True], [False, False, False]])
    batch = Batch({}, {"tracks": mask}, {})
    probs = task.predict({"to": logits}, batch)["probs"]
    assert torch.all(probs[0, 1:] == 0)
    torch.testing.assert_close(probs[1].sum(-1), torch.ones(3))
    jet = ClassificationTask("jc", "jets", 3, label="y", class_names=["a", "b", "c"])
    p = jet.predict(torch.randn(4, 3), None)["probs"]
    torch.testing.assert_close(p.sum(-1), torch.ones(4))


def test_regression_nan_targets_excluded():
    torch.manual_seed(0)
    task = RegressionTask(
        "reg", "jets", 3, targets=["a", "b"], norm_params={"mean": [1.0, 2.0], "std": [2.0, 4.0]}
    )
    x = torch.randn(4, 3, requires_grad=True)
    a = torch.tensor([1.0, math.nan, 3.0, 5.0])
    b = torch.tensor([math.nan, math.inf, 6.0, 2.0])
    preds, loss = task(x, {"a": a, "b": b})
    t = torch.stack([(a - 1) / 2, (b - 2) / 4], -1)
    keep = torch.isfinite(t)
    expected = ((preds - t)[keep] ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # all targets NaN: finite zero loss
    _, loss0 = task(x, {"a": torch.full((4,), math.nan), "b": torch.full((4,), math.nan)})
    assert loss0.item() == 0.0


def test_regression_inverse_scaling():
    task = RegressionTask("reg", "jets", 3, targets="ptb", target_denominators="pt")
    preds = torch.tensor([[0.5], [2.0]])
    batch = Batch({}, {}, {"jets": {"pt": torch.tensor([10.0, 3.0])}})
    torch.testing.assert_close(task.predict(preds, batch)["values"], torch.tensor([[5.0], [6.0]]))
    labels = {"ptb": torch.tensor([5.0, 6.0]), "pt": torch.tensor([10.0, 3.0])}
    torch.testing.assert_close(task.scaled_targets(labels), preds)
    assert task.labels_needed("fit") == ["ptb", "pt"]
    assert task.labels_needed("test") == ["pt"]

    norm = RegressionTask("reg", "jets", 3, targets="x", norm_params={"mean": 3.0, "std": 2.0})
    torch.testing.assert_close(norm.predict(torch.tensor([[1.0]]))["values"], torch.tensor([[5.0]]))


def test_regression_config_errors():
    with pytest.raises(ValueError, match="mutually exclusive"):
        RegressionTask(
            "r", "jets", 2, targets="a", target_denominators="b", norm_params={"mean": 0, "std": 1}
        )
    with pytest.raises(ValueError, match="std != 0"):
        RegressionTask("r", "jets", 2, targets="a", norm_params={"mean": 0, "std": 0})
    with pytest.raises(ValueError, match="unknown loss"):
        RegressionTask("r", "jets", 2, targets="a", loss="NoSuchLoss")


def test_missing_label_field_error():
    task = ClassificationTask("jc", "jets", 3, label="flavour_label", class_names=["a", "b"])
    with pytest.raises(KeyError, match="flavour_label"):
        task(torch.randn(2, 3), {"other": torch.zeros(2)})
