"""The package's shape: no import cycles, layers import downward only, and no
user-facing text cites files a user of the package does not have."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bilevel_rl"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Module-level ``bilevel_rl`` imports of every module (function-level lazy
    imports excluded), resolved to modules where the name is one."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "bilevel_rl"
            ):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("bilevel_rl")}
        graph[name] = {d for d in deps if d != name and d in modules}
    return graph


def test_no_import_cycles():
    graph = module_imports()
    # A package's __init__ re-exports its children; edges into a package from
    # its own children are the parent-import Python does anyway: drop them.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_importing_the_algorithms_loads_no_experiment_or_cli_code():
    code = (
        "import sys, bilevel_rl.algorithms\n"
        "bad = [m for m in sys.modules if m.startswith(('bilevel_rl.experiment', "
        "'bilevel_rl.cli'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_algorithms_import_nothing_from_the_layers_above():
    graph = module_imports()
    for name, deps in graph.items():
        if name.startswith("bilevel_rl.algorithms"):
            above = {
                d
                for d in deps
                if d.startswith(("bilevel_rl.experiment", "bilevel_rl.cli"))
            }
            assert not above, (name, above)
        if name.startswith("bilevel_rl.suites"):
            assert not {d for d in deps if d.startswith("bilevel_rl.algorithms")}


def test_user_facing_text_cites_no_internal_spec():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    files += list((ROOT / "notebooks").glob("*.ipynb"))
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "MATH.md" in line or "DESIGN.md" in line
    ]
    assert not offenders, offenders


def test_cited_math_sections_exist():
    import re

    headings = set(
        re.findall(r"^## (\d+)\.", (ROOT / "docs/math.md").read_text(), re.M)
    )
    files = [*PACKAGE.rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    for p in files:
        for section in re.findall(r"docs/math\.md §(\d+)", p.read_text()):
            assert section in headings, (p.name, section)
