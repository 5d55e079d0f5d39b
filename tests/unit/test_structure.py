"""The package's shape: imports flow one way (no cycle, no function-local import of the package)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "wsgi_stream"


def _imports(path: Path):
    """(module imported from the package, at module level?) for every import in `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            for name in names:
                yield name.split(".")[0], id(node) in top
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in ([module] if module else [a.name for a in node.names]):
                if name.startswith("wsgi_stream."):
                    yield name.split(".")[1], id(node) in top


def _graph() -> dict[str, set[str]]:
    return {p.stem: {m for m, _ in _imports(p)} for p in PACKAGE.glob("*.py")}


def test_no_function_local_import_of_the_package():
    local = [f"{p.name} imports {m}" for p in PACKAGE.glob("*.py") for m, top in _imports(p) if not top]
    assert local == []


def test_no_import_cycle():
    graph = _graph()
    done, cycles = set(), []

    def visit(module, stack):
        if module in stack:
            cycles.append(" -> ".join(stack[stack.index(module):] + [module]))
            return
        if module in done or module not in graph:
            return
        for dep in sorted(graph[module]):
            visit(dep, stack + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_capabilities_never_import_the_web_layer():
    web = {"app", "endpoints", "server", "cli", "wsgi", "__init__"}
    graph = _graph()
    upward = [f"{m} imports {d}" for m, deps in graph.items() if m not in web for d in deps if d in web]
    assert upward == []
