"""The cycle check ``make lint`` runs (devtools/import_cycles.py): it finds cycles of any
length, and our packages have none."""

from __future__ import annotations

from devtools.import_cycles import cycles, main

GRAPH = {
    "a": {"b"}, "b": {"c"}, "c": {"a"},  # a three-module ring
    "d": {"e"}, "e": {"d", "f"},  # a pair, leading out to f
    "f": set(), "g": {"g"},  # a module importing itself is no cycle between modules
}  # fmt: skip


def test_cycles_of_any_length_are_found_and_nothing_else() -> None:
    assert cycles(GRAPH, lambda m: GRAPH[m]) == [["a", "b", "c"], ["d", "e"]]


def test_a_graph_without_cycles_has_none() -> None:
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(2000)} | {"m2000": set()}
    assert cycles(chain, lambda m: chain[m]) == []  # deep: no recursion limit


def test_our_packages_have_no_import_cycle() -> None:
    assert main() == 0
