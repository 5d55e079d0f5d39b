"""A clean install runs the tests: every import is declared in setup.py, and CI runs the README's command.

Read with ast, never imported or run: setup.py, every .py under tests/ and bench/, .ci/run, README.md.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Distributions whose import name is not their name in lower case with "-" and "." as "_".
IMPORT_NAME = {"zipstream-new": "zipstream"}


def imported_modules(path: Path) -> set[str]:
    """The top-level module of every absolute import in `path`, function-local ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement string ("stream-unzip>=0.0.90" -> "stream-unzip")."""
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)


def import_name(distribution: str) -> str:
    """The module a distribution installs, by the packaging convention or IMPORT_NAME."""
    name = distribution.lower()
    return IMPORT_NAME.get(name, re.sub(r"[-.]+", "_", name))


def declared_distributions(setup_py: Path = REPO / "setup.py") -> dict[str, list[str]]:
    """install_requires and each extra of setup.py's setup() call, read as literals."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            given = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                     if k.arg in ("install_requires", "extras_require")}
            groups = {"install_requires": given.get("install_requires", []), **given.get("extras_require", {})}
            return {group: [requirement_name(r) for r in reqs] for group, reqs in groups.items()}
    raise AssertionError("setup.py has no setup(...) call")


def project_modules() -> set[str]:
    """The project's own top-level modules: its package and the .py files at the repository root."""
    return {"wsgi_stream"} | {p.stem for p in REPO.glob("*.py")}


def undeclared(path: Path, *folders: Path) -> list[str]:
    """Modules `path` imports that are neither stdlib, the project, a module of `folders`, nor declared."""
    declared = {import_name(d) for dists in declared_distributions().values() for d in dists}
    local = {p.stem for folder in folders for p in folder.rglob("*.py")}
    allowed = set(sys.stdlib_module_names) | project_modules() | local | declared
    return sorted(imported_modules(path) - allowed)


TEST_FILES = sorted((REPO / "tests").rglob("*.py"))
BENCH_FILES = sorted((REPO / "bench").rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# -- the rules themselves ----------------------------------------------------------------------------

@pytest.mark.parametrize("requirement, distribution, module", [
    ("pytest>=8", "pytest", "pytest"),
    ("webtest>=3.0", "webtest", "webtest"),
    ("WebTest>=3.0", "WebTest", "webtest"),
    ("zipstream-new>=1.1.8,<2", "zipstream-new", "zipstream"),
    ("stream-unzip>=0.0.90", "stream-unzip", "stream_unzip"),
    ("ruamel.yaml", "ruamel.yaml", "ruamel_yaml"),
    ("isal[extra] ; python_version>='3.11'", "isal", "isal"),
])
def test_distribution_to_import_name(requirement, distribution, module):
    assert requirement_name(requirement) == distribution
    assert import_name(distribution) == module


def test_imports_are_read_everywhere_in_a_file(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import os.path, json as j\nfrom urllib3.util import Retry\nfrom . import sibling\n"
                      "def f():\n    import werkzeug.http\n    from .x import y\n")
    assert imported_modules(source) == {"os", "json", "urllib3", "werkzeug"}


def test_setup_py_declares_what_the_tests_need():
    declared = declared_distributions()
    assert {"werkzeug", "urllib3", "waitress"} <= set(declared["install_requires"])
    # Programs the tests start (uwsgi, gunicorn) count as much as imports.
    needed = {"pytest", "webtest", "playwright", "gunicorn", "uwsgi", "trustme", "stream-unzip"}
    assert needed <= set(declared["test"])
    assert declared["fast"] == ["isal"]


# -- the files -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", TEST_FILES, ids=rel)
def test_every_import_in_tests_is_declared(path):
    missing = undeclared(path, REPO / "tests")
    assert not missing, f"{rel(path)} imports {', '.join(missing)}: not stdlib, the project, a helper in " \
                        "tests/, nor declared in setup.py (install_requires or an extra)"


@pytest.mark.parametrize("path", BENCH_FILES, ids=rel)
def test_every_import_in_bench_is_declared(path):
    # bench/ starts servers through tests/support.py, as the tests do.
    missing = undeclared(path, REPO / "bench", REPO / "tests")
    assert not missing, f"{rel(path)} imports {', '.join(missing)}, which setup.py does not declare"


# -- CI runs what the README tells users to run -----------------------------------------------------

def ci_test_command(run: Path = REPO / ".ci" / "run") -> str:
    """The line after the comment that marks the README's test command in .ci/run."""
    lines = run.read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("# The README's test command"))
    command = next(line for line in lines[marker + 1:] if "pytest" in line)
    return command.split("||")[0].strip()


def readme_sh_commands(readme: Path = REPO / "README.md") -> list[str]:
    """Every command in README.md's ```sh blocks: lines split at && and ;, comments dropped."""
    blocks = re.findall(r"^```sh\n(.*?)^```", readme.read_text(), flags=re.M | re.S)
    lines = [line.split(" #")[0] for block in blocks for line in block.splitlines()]
    return [command.strip() for line in lines for command in re.split(r"&&|;", line)]


def test_ci_runs_the_readme_test_command():
    command = ci_test_command()
    assert command == ".venv/bin/python -m pytest"
    assert command in readme_sh_commands(), f"README.md shows no `{command}` line in a ```sh block"
