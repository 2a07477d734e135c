"""The import graph of the two packages, read from the source with ``ast``: no import cycle between modules (imports
inside functions and by ``importlib`` strings included), and every arrow points down: ``affcons`` never imports
``blockwise``."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("affcons", "blockwise")


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the two packages (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> set[str]:
    """Every module name ``path`` imports (at module level, inside functions, or as a string passed to
    ``importlib.import_module``/``__import__``/a :class:`affcons.commands.Command`), relative imports resolved.
    ``from pkg import name`` yields ``pkg.name`` and ``pkg`` (the caller keeps what is a module)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
            target = ".".join(filter(None, [prefix, node.module or ""]))
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in ("import_module", "__import__"):
                names.add(str(node.args[0].value))
            if function == "Command" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                names.add(str(node.args[1].value))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (an import of ``a.b.c`` runs ``a.b.c`` only, here: the parents'
    ``__init__`` run too, but importing a submodule never re-enters a module that is already importing it)."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        names = imported_names(path, module, path.name == "__init__.py")
        graph[module] = {name for name in names if name in modules and name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert {"affcons.cli", "blockwise.segment", "blockwise.steps.fragments", "blockwise.worker"} <= set(graph)
    assert "blockwise.steps.fragments" in graph["blockwise.segment"]
    assert "affcons.commands.train" in graph["affcons.commands"]  # by Command string
    assert "blockwise.registry" in graph["blockwise.worker"]  # inside a function


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_detection_finds_a_hidden_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_affcons_never_imports_blockwise():
    upward = {
        module: sorted(target for target in targets if target.split(".")[0] == "blockwise")
        for module, targets in import_graph().items()
        if module.split(".")[0] == "affcons"
    }
    assert {module: targets for module, targets in upward.items() if targets} == {}
    for path in (REPO / "affcons").rglob("*.py"):
        strings = [
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        assert not [s for s in strings if s == "blockwise" or s.startswith("blockwise.")], path


def test_workers_load_neither_funlib_nor_numba_unless_their_step_runs_compiled_kernels():
    """Every daisy worker unpickles its step and the step's config (``blockwise.config``, which validates the edge
    scoring), and a cluster worker rebuilds its step from the config (``blockwise.registry``, ``box_for``): only
    the fragments step, which runs the compiled watershed, should pay for loading numba, and no worker needs
    funlib.persistence (with dask, xarray and pandas) or torch unless it predicts."""
    code = (
        "import sys, blockwise.config, blockwise.registry, affcons.multiscale, affcons.segment.rag\n"
        "from affcons.segment import QUANTILE_BINS, EdgeTable, apply_lookup, edge_table, parse_scoring\n"
        "from blockwise.volumes import box_for\n"
        "box_for('in.zarr/affs', (0, 0, 0), (1, 1, 1))\n"
        "print(sorted(m for m in ('numba', 'scipy', 'torch', 'funlib.persistence', 'dask') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"
