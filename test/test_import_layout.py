"""No import circles among the ``depth_node`` modules (read with ``ast``, nothing is imported).

Every ``import depth_node.x`` and ``from depth_node.x import y`` counts, at the top of a module
and inside a function alike: a lazy import that dodges a circle at import time is still a
circle. ``from depth_node.x import y`` depends on the submodule ``depth_node.x.y`` when there is
one, else on the package ``depth_node.x`` (its ``__init__``, which depends on the submodules it
re-exports). Imports under ``if TYPE_CHECKING:`` never run and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = 'depth_node'
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Lazy (function-level) imports left out of the graph: ``(importer, imported) -> why``. Only
#: for a lazy import that keeps a heavy optional dependency from loading; never to hide a circle.
LAZY_ALLOWED: dict[tuple[str, str], str] = {}

#: Circles known today, each as the set of modules of one strongly connected part of the graph,
#: in modules being restructured elsewhere; empty it as they go (a stale entry fails the test).
KNOWN_CYCLES_TO_REMOVE: list[frozenset[str]] = []


def module_name(root: Path, file: Path) -> str:
    """``depth_node.a.b`` for ``<root>/a/b.py``, ``depth_node.a`` for ``<root>/a/__init__.py``."""
    parts = list(file.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join([PACKAGE, *parts])


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or \
        (isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _imports(tree: ast.AST):
    """``(node, lazy)`` for every import statement, skipping ``if TYPE_CHECKING:`` bodies."""
    def walk(nodes, lazy: bool):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, lazy
            elif _type_checking_only(node):
                yield from walk(node.orelse, lazy)
            else:
                yield from walk(ast.iter_child_nodes(node), lazy or isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk([tree], False)


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[tuple[str, str], bool]]:
    """The module graph under ``root`` (the ``depth_node`` folder): ``module -> imported
    modules``, and per edge whether every import making it is lazy (inside a function)."""
    files = {module_name(root, f): f for f in sorted(root.rglob('*.py'))}
    packages = {m for m, f in files.items() if f.name == '__init__.py'}
    graph: dict[str, set[str]] = {m: set() for m in files}
    lazy_only: dict[tuple[str, str], bool] = {}

    def resolve(name: str) -> str | None:
        while name and name not in files:  # depth_node.a.b.attr -> depth_node.a.b
            name = name.rpartition('.')[0]
        return name or None

    for module, file in files.items():
        tree = ast.parse(file.read_text(encoding='utf-8'), filename=str(file))
        for node, lazy in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ''
                if node.level:  # relative: from the importer's package
                    anchor = module if module in packages else module.rpartition('.')[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition('.')[0]
                    base = f'{anchor}.{base}' if base else anchor
                targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in files else base
                           for alias in node.names]
            for target in targets:
                if target != PACKAGE and not target.startswith(PACKAGE + '.'):
                    continue
                target = resolve(target)
                if target is None or target == module:
                    continue
                graph[module].add(target)
                edge = (module, target)
                lazy_only[edge] = lazy_only.get(edge, True) and lazy
    for edge, why in LAZY_ALLOWED.items():
        if lazy_only.get(edge) and why:
            graph[edge[0]].discard(edge[1])
    return graph, lazy_only


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The parts of ``graph`` with a circle (Tarjan), each as its set of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[frozenset[str]] = []

    def visit(start: str) -> None:  # iterative, so deep graphs do not hit the recursion limit
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.add(member)
                    if member == node:
                        break
                if len(part) > 1 or node in graph[node]:
                    parts.append(frozenset(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return parts


def one_cycle(graph: dict[str, set[str]], part: frozenset[str]) -> list[str]:
    """A shortest circle through the alphabetically first module of ``part``, closed
    (``[a, b, a]``)."""
    start = min(part)
    paths = {start: [start]}
    queue = [start]
    for node in queue:  # breadth first, inside the part
        for child in sorted(graph[node] & part):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f'no circle through {start}')  # pragma: no cover - part has one


def describe(graph: dict[str, set[str]], lazy_only: dict[tuple[str, str], bool],
             part: frozenset[str]) -> str:
    """One circle of ``part``, lazy edges marked, and the modules of the part."""
    cycle = one_cycle(graph, part)
    text = cycle[0]
    for a, b in zip(cycle, cycle[1:]):
        text += (' -(lazy)-> ' if lazy_only.get((a, b)) else ' -> ') + b
    return f'{text}   [all modules of this circle: {", ".join(sorted(part))}]'


def cycles_found(root: Path = ROOT) -> list[str]:
    """A line naming a circle for every unexpected circular part of the graph under ``root``."""
    graph, lazy_only = import_graph(root)
    known = set(KNOWN_CYCLES_TO_REMOVE)
    return [describe(graph, lazy_only, part) for part in strongly_connected(graph)
            if part not in known]


def test_graph_sees_the_package():
    graph, _ = import_graph()
    assert 'depth_node.estimator.facade' in graph
    # a package __init__ depends on the submodules it re-exports
    assert 'depth_node.estimator.facade' in graph['depth_node.estimator']


def test_no_import_cycles():
    found = cycles_found()
    assert not found, 'import circle(s) among depth_node modules:\n  ' + '\n  '.join(found)


def test_known_cycles_still_exist():
    parts = set(strongly_connected(import_graph()[0]))
    gone = [sorted(c) for c in KNOWN_CYCLES_TO_REMOVE if c not in parts]
    assert not gone, f'no longer circles, remove them from KNOWN_CYCLES_TO_REMOVE: {gone}'


def test_lazy_allow_list_is_explained_and_used():
    _, lazy_only = import_graph()
    for edge, why in LAZY_ALLOWED.items():
        assert why.strip(), f'{edge}: say why this lazy import is allowed'
        assert lazy_only.get(edge), f'{edge}: no longer a lazy-only import; drop it'


def test_checker_finds_a_lazy_circle(tmp_path):
    package = tmp_path / PACKAGE
    (package / 'sub').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'sub' / '__init__.py').write_text('from depth_node.sub.a import A\n')
    (package / 'sub' / 'a.py').write_text('from depth_node.sub.b import B\nA = 1\n')
    (package / 'sub' / 'b.py').write_text(
        'B = 2\n\n\ndef late():\n    from depth_node.sub import A\n    return A\n')
    (package / 'c.py').write_text('from depth_node import sub as s\n')
    graph, lazy_only = import_graph(package)
    assert graph['depth_node.c'] == {'depth_node.sub'}
    assert lazy_only[('depth_node.sub.b', 'depth_node.sub')]
    found = cycles_found(package)
    assert len(found) == 1
    assert found[0].startswith('depth_node.sub -> depth_node.sub.a -> depth_node.sub.b '
                               '-(lazy)-> depth_node.sub')
