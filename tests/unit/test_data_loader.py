"""DataLoaders and datasets from cfg.data: epochs, workers, shuffle buffer, resume, config."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_data_helpers import make_arrays, write_h5

from saltx.data.dataset import DEFAULT_READ_THREADS, JetDataset
from saltx.data.loader import build_dataloader, build_datasets
from saltx.errors import DataError

VARS = {"jets": ["pt_btagJes"], "tracks": ["d0", "pt"], "PARAMETERS": ["mass"]}
PARAMS = {"mass": {"train": [10.0, 40.0], "test": 40.0}}
LABELS = {"jets": ["flavour_label"], "tracks": ["ftagTruthOriginLabel"]}


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "data.h5"
    return write_h5(path, make_arrays(n_jets=103, n_tracks=5))


def dataset(path, **kw):
    return JetDataset(path, VARS, labels=LABELS, parameters=PARAMS, seed=7, **kw)


def jet_ids(batch) -> list[int]:
    """Jet index of each row, recovered from the first track's d0 = 100 * jet."""
    return (batch.inputs["tracks"][:, 0, 0] / 100).round().long().tolist()


def snapshot(loader):
    return [(jet_ids(b), b.inputs["PARAMETERS"].clone()) for b in loader]


def test_val_loader_reads_every_jet_once(h5file):
    loader = build_dataloader(dataset(h5file), batch_size=10, shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 11
    ids = [j for b in batches for j in jet_ids(b)]
    assert ids == list(range(103))
    assert batches[-1].labels["tracks"]["ftagTruthOriginLabel"].shape == (3, 5)


def test_train_loader_epochs_and_resume(h5file):
    loader = build_dataloader(dataset(h5file), batch_size=10, shuffle=True, drop_last=True, seed=1)
    loader.set_epoch(0)
    e0 = snapshot(loader)
    loader.set_epoch(1)
    e1 = snapshot(loader)
    assert len(e0) == len(loader) == 10 and all(len(ids) == 10 for ids, _ in e0)
    assert [ids for ids, _ in e0] != [ids for ids, _ in e1]
    loader.set_epoch(0)
    again = snapshot(loader)
    assert [ids for ids, _ in again] == [ids for ids, _ in e0]
    for (_, p0), (_, p1) in zip(e0, again):
        assert torch.equal(p0, p1)  # parameter draws are reproducible
    loader.set_epoch(1, start_batch=4)
    assert [ids for ids, _ in snapshot(loader)] == [ids for ids, _ in e1[4:]]


def test_workers_give_the_same_batches(h5file):
    kw = {"batch_size": 10, "shuffle": True, "drop_last": True, "seed": 3}
    ref = build_dataloader(dataset(h5file), num_workers=0, **kw)
    par = build_dataloader(dataset(h5file), num_workers=2, **kw)
    assert par.persistent_workers
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        par.set_epoch(epoch)
        a, b = snapshot(ref), snapshot(par)
        assert [ids for ids, _ in a] == [ids for ids, _ in b]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_ddp_loaders_split_the_epoch(h5file):
    loaders = [
        build_dataloader(
            dataset(h5file), batch_size=10, shuffle=True, drop_last=True, rank=r, world_size=3
        )
        for r in range(3)
    ]
    ids = [jet_ids(b) for loader in loaders for b in loader]
    assert {len(list(loader)) for loader in loaders} == {3}
    flat = [j for batch in ids for j in batch]
    assert len(flat) == len(set(flat)) == 90


def test_shuffle_buffer_mixes_and_resumes(h5file):
    def make():
        return build_dataloader(
            dataset(h5file), batch_size=10, shuffle=True, drop_last=True, seed=2, shuffle_buffer=40
        )

    loader = make()
    loader.set_epoch(0)
    batches = [jet_ids(b) for b in loader]
    assert len(batches) == len(loader) == 10
    assert all(len(ids) == 10 for ids in batches)
    flat = [j for ids in batches for j in ids]
    assert len(set(flat)) == 100  # every jet of the full batches, once
    blocks_per_batch = [len({j // 10 for j in ids}) for ids in batches]
    assert max(blocks_per_batch) > 1  # jets from several read batches are mixed
    loader.set_epoch(0)
    assert [jet_ids(b) for b in loader] == batches  # deterministic
    resumed = make()
    resumed.set_epoch(0, start_batch=5)
    assert [jet_ids(b) for b in resumed] == batches[5:]


def data_cfg(path, **over):
    cfg = {
        "train_file": str(path),
        "val_file": str(path),
        "test_file": str(path),
        "num_train": -1,
        "num_val": 50,
        "num_test": -1,
        "global_object": "jets",
        "variables": VARS,
        "input_map": None,
        "num_inputs": {"tracks": 3},
        "non_finite_to_num": False,
        "parameters": PARAMS,
    }
    cfg.update(over)
    return OmegaConf.create(cfg)


def test_build_datasets_from_config(h5file):
    fit = build_datasets(data_cfg(h5file), LABELS, "fit", seed=1)
    assert set(fit) == {"train", "val"}
    assert len(fit["train"]) == 103 and len(fit["val"]) == 50
    assert fit["val"].stage == "fit"  # validation draws parameters like training
    assert fit["train"][0:4].inputs["tracks"].shape == (4, 3, 2)
    test = build_datasets(data_cfg(h5file), None, "test")
    assert set(test) == {"test"} and (test["test"][0:5].inputs["PARAMETERS"] == 40).all()
    with pytest.raises(DataError, match=r"requested 500 jets"):
        build_datasets(data_cfg(h5file, num_train=500), LABELS, "fit")
    with pytest.raises(DataError, match=r"data\.test_file is not set"):
        build_datasets(data_cfg(h5file, test_file=None), None, "test")
    assert fit["train"].file.read_threads == DEFAULT_READ_THREADS  # data.read_threads unset
    one = build_datasets(data_cfg(h5file, read_threads=1), LABELS, "fit", seed=1)["train"]
    assert one.file.read_threads == 1
    assert torch.equal(one[0:40].inputs["tracks"], fit["train"][0:40].inputs["tracks"])


def test_default_config_keys_match_the_schema():
    import saltx.config as schema

    conf = Path(schema.__file__).parent / "conf" / "data"
    raw = OmegaConf.load(conf / "default.yaml")
    assert list(raw.defaults) == [{"variables": "gn2"}, "_self_"]
    raw.pop("defaults")
    raw.variables = OmegaConf.load(conf / "variables" / "gn2.yaml")
    root = OmegaConf.create({"paths": {"data_dir": "/d"}, "data": raw})
    resolved = OmegaConf.to_container(root, resolve=True)["data"]
    data = OmegaConf.merge(OmegaConf.structured(schema.DataConfig), resolved)  # no unknown key
    assert data.train_file == "/d/train.h5" and data.val_file == "/d/val.h5"
    assert data.test_file == "/d/test.h5" and data.norm_dict == "/d/norm_dict.yaml"
    assert data.class_dict == "/d/class_dict.yaml"
    assert data.variables.jets == ["pt_btagJes", "eta_btagJes"]
    assert len(data.variables.tracks) == 19
    emu = OmegaConf.load(conf / "variables" / "gn2emu.yaml")
    assert (
        len(emu.electrons) == 28
        and len(OmegaConf.load(conf / "variables" / "gn1.yaml").tracks) == 21
    )


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
def test_pin_memory_loader_runs(h5file):
    loader = build_dataloader(
        dataset(h5file), batch_size=50, shuffle=False, drop_last=False, pin_memory=True
    )
    assert sum(b.num_jets for b in loader) == 103
    assert np.isfinite(next(iter(loader)).inputs["tracks"].numpy()).all()


def test_shared_slots_match_default_transport_and_survive_early_breaks(h5file):
    kw = {"batch_size": 10, "shuffle": True, "drop_last": True, "seed": 4, "num_workers": 2}
    plain = build_dataloader(dataset(h5file), shared_slots=False, **kw)
    slots = build_dataloader(dataset(h5file), **kw)
    assert plain.slots is None and slots.slots is not None
    assert isinstance(slots.jet_dataset, JetDataset) and isinstance(plain.jet_dataset, JetDataset)
    assert len(slots.dataset) == 103
    for epoch in range(3):
        plain.set_epoch(epoch)
        slots.set_epoch(epoch)
        a, b = snapshot(plain), snapshot(slots)
        assert [ids for ids, _ in a] == [ids for ids, _ in b]
        for x, y in zip(list(plain), list(slots)):
            for name in x.inputs:
                assert torch.equal(x.inputs[name], y.inputs[name])
            assert torch.equal(x.masks["tracks"], y.masks["tracks"])
            assert torch.equal(
                x.labels["tracks"]["ftagTruthOriginLabel"],
                y.labels["tracks"]["ftagTruthOriginLabel"],
            )
        first = next(iter(slots))  # abandoned iterations must not leak slots or batches
        for i, held in enumerate(slots):
            assert held.num_jets == 10
            if i == 2:
                break
        assert jet_ids(first) == a[0][0]
    plain.set_epoch(0)
    slots.set_epoch(0)
    assert [jet_ids(b) for b in slots] == [ids for ids, _ in snapshot(plain)]
    del first, held, x, y  # the last batches that still view slots
    gc.collect()
    free = sorted(slots.slots.free.get(timeout=5) for _ in range(2 * 2 + 4))
    assert free == list(range(8))  # every slot is back once its batches are dropped


def test_reads_the_synthetic_generator_files(synthetic_dir):
    """The data layer reads saltx.data.synthetic's files with GN2's inputs, edges and dicts."""
    from saltx.data.class_weights import load_class_dict
    from saltx.data.labels import read_class_names
    from saltx.data.norm import load_norm_dict
    from saltx.models.inputnorm import norm_stats

    conf = Path(__file__).parents[2] / "src" / "saltx" / "conf" / "data" / "variables"
    variables = dict(OmegaConf.to_container(OmegaConf.load(conf / "gn2.yaml")))
    variables["EDGE"] = ["dR", "kt", "z", "subjetIndex", "isSelfLoop"]
    labels = {"jets": ["flavour_label"], "tracks": ["ftagTruthOriginLabel", "ftagTruthVertexIndex"]}
    ds = JetDataset(synthetic_dir / "train.h5", variables, labels=labels)
    batch = next(iter(build_dataloader(ds, batch_size=100, shuffle=True, drop_last=True)))
    assert batch.inputs["tracks"].shape == (100, 40, 19)
    assert batch.inputs["EDGE"].shape == (100, 40, 4)
    assert torch.isfinite(batch.inputs["tracks"]).all()
    stats = norm_stats(load_norm_dict(str(synthetic_dir / "norm_dict.yaml")), variables)
    assert len(stats["tracks"][0]) == 19 and "EDGE" not in stats
    assert "flavour_label" in load_class_dict(str(synthetic_dir / "class_dict.yaml"))["jets"]
    assert len(read_class_names(synthetic_dir / "train.h5")) == 4


def test_worker_errors_reach_the_main_process(tmp_path):
    arrays = make_arrays(n_jets=40, n_tracks=4)
    arrays["tracks"]["d0"][25, 0] = np.nan  # jet 25, a valid slot
    path = write_h5(tmp_path / "nan.h5", arrays)
    ds = JetDataset(path, {"tracks": ["d0"]})
    loader = build_dataloader(ds, batch_size=10, shuffle=False, drop_last=False, num_workers=1)
    with pytest.raises(DataError, match=r"'d0' at jet index 25"):
        list(loader)
    ok = JetDataset(path, {"tracks": ["d0"]}, non_finite_to_num=True)
    loader = build_dataloader(ok, batch_size=10, shuffle=False, drop_last=False, num_workers=1)
    assert [b.num_jets for b in loader] == [10, 10, 10, 10]
