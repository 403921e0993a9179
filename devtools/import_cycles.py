"""``python -m devtools.import_cycles``: fail (exit 1) on any import cycle between modules of
our packages, type-checking imports included (a cycle of types is still a design cycle).
Run by ``make lint``. Each cycle is printed as its modules, in the order they import."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping

PACKAGES = ("acquisition", "drivers", "simulators", "devtools", "labware")

__all__ = ["cycles", "main"]


def cycles(modules: Iterable[str], imports: Callable[[str], Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative: no recursion limit), each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(imports(root)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(imports(nxt))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _graph() -> tuple[list[str], Mapping[str, set[str]]]:
    import grimp

    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    modules = sorted(graph.modules)
    return modules, {m: graph.find_modules_directly_imported_by(m) for m in modules}


def main() -> int:
    modules, edges = _graph()
    found = cycles(modules, lambda m: edges.get(m, set()))
    for component in found:
        print("import cycle: " + " <-> ".join(component), file=sys.stderr)
    if found:
        return 1
    print(f"no import cycle among {len(modules)} modules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
