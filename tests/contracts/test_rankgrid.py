"""The layers x module-types grid, on rows laid out by hand."""

from __future__ import annotations

from dora_core.contracts.rankgrid import RankGrid, rank_grid


def test_layers_ascend_types_keep_first_seen_order_and_gaps_are_none() -> None:
    rows = [
        (1, "v", 10),
        (0, "q", 1),
        (1, "q", 11),
        (0, "ffn", 3),
        (2, "v", 20),
    ]
    layers, types, matrix = rank_grid(rows)
    assert layers == [0, 1, 2]
    assert types == ["v", "q", "ffn"]
    assert matrix == [
        [None, 1, 3],
        [10, 11, None],
        [20, None, None],
    ]


def test_a_pair_given_twice_keeps_its_last_value_by_default() -> None:
    grid = rank_grid([(0, "q", "first"), (0, "q", "second")])
    assert grid == RankGrid(layers=[0], types=["q"], matrix=[["second"]])


def test_combine_sees_every_value_of_a_pair_in_row_order() -> None:
    # two seeds of the same 2 x 1 pattern: layer 0 live 3 then 4, layer 1 live 0 then 1
    rows = [(0, "q", 3), (1, "q", 0), (0, "q", 4), (1, "q", 1)]
    seen = rank_grid(rows, combine=list).matrix
    assert seen == [[[3, 4]], [[0, 1]]]
    mean = rank_grid(rows, combine=lambda v: sum(v) / len(v)).matrix
    assert mean == [[3.5], [0.5]]


def test_no_rows_give_an_empty_grid() -> None:
    assert rank_grid([]) == RankGrid([], [], [])


def test_a_none_value_stays_none() -> None:
    # a module registered before any scores: the cell exists but has no value yet
    assert rank_grid([(0, "q", None), (0, "k", 2)]).matrix == [[None, 2]]
