"""The house's layout, read from the source: core at the bottom, adapters beside it, then the
app layer, then export, then the command line; no import points back up, no import inside a
function hides a circle, argparse lives in the command line only, functions stay short."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
# camkit.adapters lives in the top-level adapters/ folder (package-dir mapping in pyproject.toml).
SOURCES = {"camkit": ROOT / "camkit", "camkit.adapters": ROOT / "adapters"}
LAYER = {"camkit.adapters": 1, "camkit.app": 2, "camkit.export": 3, "camkit.report": 3, "camkit.cli": 4, "camkit.__main__": 4}  # the rest: 0


def _modules() -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for pkg, folder in SOURCES.items():
        for p in sorted(folder.rglob("*.py")):
            parts = list(p.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if not name.startswith("camkit.adapters") or pkg == "camkit.adapters":
                out[name] = p
    return out


MODULES = _modules()


def _package(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]


def _imports(name: str) -> Iterator[Tuple[str, int]]:
    """(camkit module imported, line) for every import in the module, inside functions too."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(name).split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # `import camkit.x.y` names camkit.x.y; a name in a module: the module
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t:
                yield t, node.lineno


def _layer(name: str) -> int:
    return max((v for k, v in LAYER.items() if name == k or name.startswith(k + ".")), default=0)


def test_the_layout_is_what_the_house_says():
    assert {"camkit.app.spec", "camkit.export.run", "camkit.cli.explain", "camkit.adapters.presets",
            "camkit.methods.registry"} <= set(MODULES)
    assert not (ROOT / "camkit" / "adapters").exists()


def test_no_import_points_up_a_layer():
    bad = [f"{m}:{line} imports {t}" for m in MODULES if m != "camkit" for t, line in _imports(m)
           if _layer(t) > _layer(m)]
    assert not bad, bad


def test_the_import_graph_has_no_circle():
    """Every import counts, also one inside a function: none may stand in for a circle. The package
    ``camkit`` itself is left out (it loads its submodules on first use)."""
    graph = {m: {t for t, _ in _imports(m) if t != "camkit" and t != m} for m in MODULES if m != "camkit"}
    # a package imports its own submodules to re-export them; a submodule importing its package's
    # __init__ back is the circle to look for, so the edge package -> child is kept.
    done: Set[str] = set()

    def visit(m: str, path: Tuple[str, ...]) -> None:
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + (m,)))
        if m in done:
            return
        for t in sorted(graph.get(m, ())):
            visit(t, path + (m,))
        done.add(m)

    for m in sorted(graph):
        visit(m, ())


def test_argparse_is_the_command_lines_alone():
    users = [m for m in MODULES if "argparse" in {a.name for n in ast.walk(ast.parse(MODULES[m].read_text()))
                                                  if isinstance(n, ast.Import) for a in n.names}]
    assert users and all(m.startswith("camkit.cli") for m in users), users


def _code_lines(fn: ast.AST) -> int:
    """A function's lines without its docstring."""
    n = fn.end_lineno - fn.lineno + 1  # type: ignore[attr-defined]
    body = fn.body  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        n -= body[0].end_lineno - body[0].lineno + 1
    return n


def test_functions_are_short():
    long = [f"{m}.{fn.name}: {_code_lines(fn)} lines" for m in MODULES
            for fn in ast.walk(ast.parse(MODULES[m].read_text()))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(fn) > 60]
    assert not long, long


def test_the_top_module_imports_alone():
    """A fresh interpreter imports the command line, the top of the house, on its own (which imports every
    layer below it); the graph tests above cover each module's own imports."""
    r = subprocess.run([sys.executable, "-c", "import camkit.cli"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_package_is_installed():
    """pyproject.toml lists the packages by name (adapters/ maps to camkit.adapters): a new package
    folder missing there would be absent from a wheel, though an editable install hides it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert found <= listed, sorted(found - listed)
