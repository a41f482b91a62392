"""The import graph of the library: no circle, nothing below the entry points imports them,
nothing outside training/ (and the builders that construct the runner) imports training/, and
nothing outside the embedded wing imports it (the wing is an application of the library), and no
module of xraygpt/ is over 500 lines."""

import ast

from conftest import REPO

ENTRY_POINTS = {p.stem for p in REPO.glob("*.py") if p.stem != "setup"}
MAY_IMPORT_TRAINING = ("xraygpt.training", "xraygpt.builders", "xraygpt.components")
WING = "xraygpt.embedded"


def library_imports() -> dict[str, set[str]]:
    """{module: the xraygpt modules and entry points it imports} for every module of xraygpt/."""
    modules = {}
    for path in (REPO / "xraygpt").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if (m in modules or m in ENTRY_POINTS) and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(library_imports()) == []


def test_cycles_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_imports_no_entry_point_and_training_only_from_above():
    graph = library_imports()
    upward = [(m, d) for m, deps in graph.items() for d in deps if d in ENTRY_POINTS]
    assert upward == []
    into_training = [(m, d) for m, deps in graph.items() for d in deps
                     if d.startswith("xraygpt.training") and not m.startswith(MAY_IMPORT_TRAINING)]
    assert into_training == []
    assert {"train", "evaluate", "demo", "cache_features"} <= ENTRY_POINTS


def in_wing(module: str) -> bool:
    return module == WING or module.startswith(WING + ".")


def test_the_library_does_not_import_the_embedded_wing():
    graph = library_imports()
    into_wing = [(m, d) for m, deps in graph.items() for d in deps if in_wing(d) and not in_wing(m)]
    assert into_wing == []
    assert {"xraygpt.embedded.dataset", "xraygpt.embedded.pipeline"} <= set(graph)  # the walk sees the wing


def test_no_library_module_over_500_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
               for p in (REPO / "xraygpt").rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 500} == {}
