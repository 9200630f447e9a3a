"""The package's import graph stays acyclic and layered.

import-linter (`lint-imports`, contracts in pyproject.toml, run by `.ci/run`) checks the layers
with the imports at module level and in functions alike; this test adds what it does not see:
imports made through `importlib.import_module("tvmsqz....")` with a literal name, and a cycle
anywhere among tvmsqz's modules, named with its path so the failure says what to untangle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tvmsqz"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The tvmsqz module `name` refers to (a module, or the package holding a name)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every tvmsqz module `name` imports: at module level, inside functions, and through
    `importlib.import_module` with a literal (absolute or `__name__`-relative) name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    if any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree)):
        # a module that imports by name: every literal that names a tvmsqz module is an import
        found.update(
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in known and n.value != name
        )
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod; `from pkg import name` imports pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.JoinedStr)
        ):
            first = node.args[0].values[0] if node.args[0].values else None
            if isinstance(first, ast.FormattedValue) and getattr(first.value, "id", None) == "__name__":
                targets = [f"{name}.{{family}}"]  # resolved below to every family module
        for target in targets:
            if target.endswith(".{family}"):
                stem = target[: -len(".{family}")]
                found.update(m for m in known if m.rpartition(".")[0] == stem)
                continue
            if target.startswith("tvmsqz"):
                resolved = _target(target, known)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, deterministic order)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    return None


def test_no_import_cycle_among_tvmsqz_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_made_through_a_function_level_import(tmp_path):
    """The check itself can fail: a function-level import back into a module that imports it."""
    edges = graph()
    edges["tvmsqz.spec"] = edges["tvmsqz.spec"] | {"tvmsqz.targets"}  # targets imports spec
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1]
    # and the scanner sees imports inside functions, not only at module level
    known = modules()
    assert "tvmsqz.backends.cpu.kernels.direct" in imports_of(
        "tvmsqz.backends.cpu.kernels.legalize", known["tvmsqz.backends.cpu.kernels.legalize"], known
    )


def test_backends_are_found_through_import_module():
    known = modules()
    found = imports_of("tvmsqz.backends", known["tvmsqz.backends"], known)
    assert {"tvmsqz.backends.cpu", "tvmsqz.backends.cuda", "tvmsqz.backends.vta"} <= found


def test_runtime_side_loads_no_compiler_module():
    """`tvmsqz run` on a device: loading the runtime modules imports no onnx, torch, Relax frontend."""
    code = (
        "import sys; import tvmsqz.runtime, tvmsqz.vm, tvmsqz.artifact; "
        "bad = [m for m in ('onnx', 'torch', 'tvmsqz.frontend', 'tvmsqz.build', 'tvmsqz.passes', 'tvm') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_contracts_hold():
    """The layers and forbidden imports of pyproject.toml's [tool.importlinter] (also in .ci/run)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint_imports) if lint_imports.exists() else "lint-imports", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
