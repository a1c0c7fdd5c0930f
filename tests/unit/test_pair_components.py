"""Connected components of the pair graph (min-label propagation) against a naive BFS."""

from __future__ import annotations

import pytest
import torch

from saltx.models.pair_components import (
    connected_components,
    edge_components,
    get_node_assignment,
    pair_adjacency,
)


def bfs_reference(logits: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Component id (smallest index) per valid track, by breadth-first search; -1 padded."""
    out = []
    for b in range(mask.shape[0]):
        valid = [i for i in range(mask.shape[1]) if not mask[b, i]]
        p = torch.sigmoid((logits[b] + logits[b].T) / 2)
        labels = [-1] * mask.shape[1]
        for start in valid:
            if labels[start] != -1:
                continue
            comp, queue = [start], [start]
            seen = {start}
            while queue:
                i = queue.pop()
                for j in valid:
                    if j != i and j not in seen and p[i, j] >= 0.5:
                        seen.add(j)
                        comp.append(j)
                        queue.append(j)
            for i in comp:
                labels[i] = min(comp)
        out.append(labels)
    return out


def logits_from_pairs(n: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    s = torch.full((n, n), -5.0)
    for i, j in pairs:
        s[i, j] = s[j, i] = 5.0
    return s


def test_hand_made_cases_multi_jet_with_padding():
    logits = torch.stack(
        [
            logits_from_pairs(5, []),  # no vertex
            logits_from_pairs(5, [(0, 2)]),  # [0,1,0,...]
            logits_from_pairs(5, [(1, 3), (3, 4), (0, 2)]),  # chain 1-3-4
            logits_from_pairs(5, [(3, 4), (0, 3)]),  # edge to a padded track is ignored
        ]
    )
    mask = torch.tensor(
        [
            [False, False, False, True, True],
            [False, False, False, False, False],
            [False, False, False, False, False],
            [False, False, False, False, True],
        ]
    )
    out = get_node_assignment(logits, mask)
    assert out.dtype == torch.long
    assert out.tolist() == [
        [0, 1, 2, -1, -1],
        [0, 1, 0, 3, 4],
        [0, 1, 0, 1, 1],
        [0, 1, 2, 0, -1],
    ]
    assert out.tolist() == bfs_reference(logits, mask)


def test_symmetrisation_averages_logits():
    s = torch.zeros(1, 2, 2)
    s[0, 0, 1], s[0, 1, 0] = 3.0, -1.0  # mean 1 -> p >= 0.5
    mask = torch.zeros(1, 2, dtype=torch.bool)
    assert get_node_assignment(s, mask).tolist() == [[0, 0]]
    s[0, 1, 0] = -4.0  # mean -0.5 -> p < 0.5
    assert get_node_assignment(s, mask).tolist() == [[0, 1]]


def test_random_graphs_match_bfs():
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3, 8, 12):
        logits = torch.randn(6, n, n, generator=gen) * 3 - 2.5
        mask = torch.rand(6, n, generator=gen) < 0.25
        assert get_node_assignment(logits, mask).tolist() == bfs_reference(logits, mask)


def test_long_chain_and_fixed_iterations():
    n = 10
    pairs = [(i, i + 1) for i in range(n - 1)]
    logits = logits_from_pairs(n, pairs)[None]
    mask = torch.zeros(1, n, dtype=torch.bool)
    adj = pair_adjacency(logits, mask)
    assert connected_components(adj, mask, early_stop=False).tolist() == [[0] * n]
    assert get_node_assignment(logits, mask).tolist() == [[0] * n]


def test_all_padded_and_empty():
    assert (
        get_node_assignment(torch.zeros(2, 3, 3), torch.ones(2, 3, dtype=torch.bool)).tolist()
        == [[-1, -1, -1]] * 2
    )
    assert get_node_assignment(torch.zeros(2, 0, 0), torch.ones(2, 0, dtype=torch.bool)).shape == (
        2,
        0,
    )


def test_edge_list_form_matches_dense_form():
    """Same indices as the dense propagation for sparse to dense graphs, any threshold."""
    gen = torch.Generator().manual_seed(7)
    for n, shift, threshold in ((40, -3.0, 0.5), (40, 0.0, 0.5), (17, 1.5, 0.5), (9, 0.0, 0.8)):
        logits = torch.randn(64, n, n, generator=gen) * 3 + shift
        mask = torch.rand(64, n, generator=gen) < 0.3
        mask[0] = True  # an all-padded jet
        mask[1] = False  # a full one
        dense = connected_components(pair_adjacency(logits, mask, threshold), mask)
        assert torch.equal(edge_components(logits, mask, threshold), dense)
        assert torch.equal(get_node_assignment(logits, mask, threshold), dense)


def test_edge_list_form_non_contiguous_and_bf16():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(8, 12, 12, generator=gen) * 2).to(torch.bfloat16)
    mask = torch.rand(8, 12, generator=gen) < 0.2
    dense = connected_components(pair_adjacency(logits, mask), mask)
    assert torch.equal(edge_components(logits, mask), dense)
    t = logits.transpose(1, 2)  # non-contiguous view
    assert torch.equal(
        edge_components(t, mask), connected_components(pair_adjacency(t, mask), mask)
    )


def test_edge_list_form_long_chain_and_shape_error():
    n = 40
    logits = logits_from_pairs(n, [(n - 1 - i, n - 2 - i) for i in range(n - 1)])[None]
    assert edge_components(logits, torch.zeros(1, n, dtype=torch.bool)).tolist() == [[0] * n]
    with pytest.raises(ValueError, match=r"expected \(1, 5, 5\)"):
        edge_components(torch.zeros(1, 4, 4), torch.zeros(1, 5, dtype=torch.bool))


def test_static_shape_graphs_take_the_dense_form(monkeypatch):
    """While compiling/tracing/exporting, no data-dependent shapes: the dense form runs."""
    import saltx.models.pair_components as pc

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 6, generator=gen) * 3
    mask = torch.rand(4, 6, generator=gen) < 0.3
    eager = get_node_assignment(logits, mask)

    def refuse(*args, **kwargs):
        raise AssertionError("edge-list form used while compiling")

    monkeypatch.setattr(pc, "edge_components", refuse)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(pc.get_node_assignment(logits, mask), eager)
