"""The package's layout: the import graph of `alliedium/` has no cycle (lazy imports inside functions count too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph(package: Path) -> dict[str, set[str]]:
    "Module -> the package's modules it imports (absolute or relative, at any depth of the code)."
    def name(p: Path) -> str:
        parts = list(p.relative_to(package.parent).with_suffix('').parts)
        return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    mods = {name(p): p for p in package.rglob('*.py') if p.name != '_modidx.py'}
    graph = {}
    for m, p in mods.items():
        pkg = m if p.name == '__init__.py' else m.rpartition('.')[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import): names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    up = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
                    base = '.'.join(up + ([base] if base else []))
                names = [base] + [f'{base}.{a.name}' for a in node.names]
            else: continue
            for n in names:
                while n and n not in mods: n = n.rpartition('.')[0]
                if n and n != m: deps.add(n)
        graph[m] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    "Each import cycle found by a depth-first walk, as the path that closes it."
    found, state, stack = [], {}, []
    def walk(u):
        state[u] = 1; stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1: found.append(stack[stack.index(v):] + [v])
            elif not state.get(v): walk(v)
        stack.pop(); state[u] = 2
    for u in sorted(graph):
        if not state.get(u): walk(u)
    return found


def test_the_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path/'pkg'
    (pkg/'sub').mkdir(parents=True)
    (pkg/'__init__.py').write_text('')
    (pkg/'sub'/'__init__.py').write_text('')
    (pkg/'cli.py').write_text('from .sub import commands\n')
    (pkg/'sub'/'commands.py').write_text('def f():\n    from ..cli import main\n')  # lazy, and still a cycle
    (pkg/'leaf.py').write_text('import pkg.sub.commands\n')
    assert cycles(import_graph(pkg)) == [['pkg.cli', 'pkg.sub.commands', 'pkg.cli']]


def test_alliedium_has_no_import_cycle():
    graph = import_graph(ROOT/'alliedium')
    assert {'alliedium.cli', 'alliedium.commands.app', 'alliedium.serving.api', 'alliedium.bench.serve'} <= set(graph)
    assert cycles(graph) == [], cycles(graph)
    assert not any(m.startswith('alliedium.commands') for m in graph['alliedium.commands.app'])  # the app is a leaf


def test_package_lines_within_120_columns():
    "Every line of alliedium/ fits 120 columns, except the first line of nbdev's `__all__` (see pyproject.toml)."
    long = [f'{p.relative_to(ROOT)}:{i}' for p in (ROOT/'alliedium').rglob('*.py') if p.name != '_modidx.py'
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 120 and not line.startswith('__all__ = [')]
    assert long == []
