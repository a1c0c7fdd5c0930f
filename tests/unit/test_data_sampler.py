"""SliceSampler: shuffling, DDP sharding and resuming, as properties over many sizes."""

from __future__ import annotations

import numpy as np
import pytest

from saltx.data.sampler import BatchIndex, BufferIndex, SliceSampler
from saltx.errors import DataError


def jets_of(items) -> list[int]:
    out: list[int] = []
    for item in items:
        slices = item.slices if isinstance(item, BufferIndex) else [(item.start, item.stop)]
        for a, b in slices:
            out.extend(range(a, b))
    return out


@pytest.mark.parametrize("num_jets", [1, 7, 100, 101, 1003])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_eval_sharding_counts_every_jet_once(num_jets, world_size):
    per_rank = [
        list(SliceSampler(num_jets, 10, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    jets = [j for items in per_rank for j in jets_of(items)]
    assert sorted(jets) == list(range(num_jets))  # disjoint and complete
    for r, items in enumerate(per_rank):
        assert len(items) == len(SliceSampler(num_jets, 10, rank=r, world_size=world_size))
    counts = [len(items) for items in per_rank]
    assert max(counts) - min(counts) <= 1
    single = list(SliceSampler(num_jets, 10))
    assert [(b.start, b.stop) for b in single] == [
        (a, min(a + 10, num_jets)) for a in range(0, num_jets, 10)
    ]  # no shuffle: file order, remainder kept


@pytest.mark.parametrize("num_jets", [100, 105, 1003])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_train_sharding_disjoint_full_equal_steps(num_jets, world_size):
    samplers = [
        SliceSampler(
            num_jets, 10, shuffle=True, drop_last=True, seed=5, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert len({len(items) for items in per_rank}) == 1  # same number of steps
        assert len(per_rank[0]) == (num_jets // 10) // world_size
        starts = [b.start for items in per_rank for b in items]
        assert len(starts) == len(set(starts))  # disjoint
        assert all(b.stop - b.start == 10 for items in per_rank for b in items)  # drop_last
        assert all(b.epoch == epoch for items in per_rank for b in items)


def test_shuffle_is_deterministic_per_seed_and_epoch():
    def order(seed, epoch):
        s = SliceSampler(1000, 10, shuffle=True, drop_last=True, seed=seed)
        s.set_epoch(epoch)
        return [b.start for b in s]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 3)) == list(range(0, 1000, 10))
    assert order(1, 0) != sorted(order(1, 0))


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("buffer", [0, 30])
def test_resume_continues_at_the_exact_batch(world_size, buffer):
    def run(start_batch):
        s = SliceSampler(
            205,
            10,
            shuffle=True,
            drop_last=True,
            seed=3,
            rank=world_size - 1,
            world_size=world_size,
            shuffle_buffer=buffer,
        )
        s.set_epoch(4, start_batch=start_batch)
        items = list(s)
        if not buffer:
            return [(b.start, b.stop) for b in items], len(s)
        flat = [sl for it in items for sl in it.slices[it.skip :]]
        return flat, len(s)

    full, n = run(0)
    assert len(full) == n
    for k in range(n + 1):
        tail, n_k = run(k)
        assert tail == full[k:]
        assert n_k == n  # len() does not depend on the resume point


def test_buffer_groups_and_resume_skip():
    s = SliceSampler(100, 10, shuffle=True, drop_last=True, seed=0, shuffle_buffer=35)
    items = list(s)
    assert all(isinstance(it, BufferIndex) for it in items)
    assert [len(it.slices) for it in items] == [3, 3, 3, 1]  # 35 jets -> 3 batches
    assert sorted(jets_of(items)) == list(range(100))
    s.set_epoch(0, start_batch=4)
    resumed = list(s)
    assert resumed[0].skip == 1 and resumed[0].slices == items[1].slices
    assert all(it.skip == 0 for it in resumed[1:])


def test_batch_index_and_errors():
    b = BatchIndex(10, 20, 2)
    assert b.slice == slice(10, 20)
    with pytest.raises(DataError):
        SliceSampler(10, 0)
    with pytest.raises(DataError):
        SliceSampler(10, 5, rank=2, world_size=2)
    with pytest.raises(DataError, match="no full batch"):
        SliceSampler(10, 20, drop_last=True)
    s = SliceSampler(100, 10)
    with pytest.raises(DataError, match="start_batch"):
        s.set_epoch(0, start_batch=11)


def test_batch_ids_are_a_permutation_shared_by_ranks():
    ids = [
        SliceSampler(100, 10, shuffle=True, drop_last=True, rank=r, world_size=2).batch_ids()
        for r in range(2)
    ]
    both = np.concatenate(ids)
    assert sorted(both.tolist()) == list(range(10))
