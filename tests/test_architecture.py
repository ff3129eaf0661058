"""The package's layout holds: no import cycles, arrows one way, torch only where it belongs,
and an install adds one top-level name.

The import graph is read from the source (``ast``), so a rule broken in a branch no
test runs is still caught.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = "graphviz_autograd"
# Where each installed package's source lives in the repository.
ROOTS = {PKG: REPO / PKG, f"{PKG}.dashboard": REPO / "dashboard", f"{PKG}.examples": REPO / "examples"}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, path: Path, *, module_level: bool) -> set[str]:
    """Modules ``name`` imports (of any package): at module level only, or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and (inside or not module_level):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and (inside or not module_level):
                if child.level:
                    parts = base.split(".")
                    parts = parts[:len(parts) - (child.level - 1)]
                    mod = ".".join(parts + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                subs = [f"{mod}.{a.name}" for a in child.names if f"{mod}.{a.name}" in MODULES]
                found.update(subs)
                if len(subs) < len(child.names) or mod not in MODULES:
                    found.add(mod)
            visit(child, inside)
    visit(tree, True)
    return found


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_the_source_map_finds_the_layers():
    for name in ("graphviz_autograd.graph.model", "graphviz_autograd.live.nodes",
                 "graphviz_autograd.tracer", "graphviz_autograd.record.recorder",
                 "graphviz_autograd.store.writer", "graphviz_autograd.dashboard.app",
                 "graphviz_autograd.examples.models", "graphviz_autograd.cli.render"):
        assert name in MODULES, name


def test_no_module_level_import_cycle():
    graph = {name: _internal(_imports(name, path, module_level=True)) - {name}
             for name, path in MODULES.items()}
    # Tarjan's strongly connected components, iteratively
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
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
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, f"module-level import cycles: {cycles}"


# layer -> (internal layers it may import, third-party or stdlib modules it must not import)
NO_UI = {"dash", "dash_cytoscape", "plotly", "flask", "waitress"}
RULES = {
    "graph": ({"graph", "errors"}, {"torch", "numpy", "graphviz", "networkx", "sqlite3"} | NO_UI),
    "store": ({"store", "graph", "errors"}, {"torch", "numpy", "graphviz", "networkx"} | NO_UI),
    "export": ({"export", "graph", "errors"}, {"torch", "numpy", "sqlite3"} | NO_UI),
    "live": ({"live", "graph", "errors"}, {"graphviz", "networkx", "sqlite3"} | NO_UI),
    "tracer": ({"tracer", "live", "graph", "errors"}, {"graphviz", "networkx", "sqlite3"} | NO_UI),
    "record": ({"record", "live", "tracer", "graph", "store", "errors", "diagnosis"},
               {"graphviz", "networkx", "sqlite3"} | NO_UI),
    "diagnosis": ({"diagnosis", "live", "tracer", "graph", "errors"}, {"sqlite3"} | NO_UI),
    "dashboard": ({"dashboard", "graph", "store", "export", "diagnosis", "errors"},
                  {"torch", "torchvision"}),
    "testing": ({"testing", "diagnosis", "graph", "errors"}, NO_UI),
}


# Graph.to_dot/render/to_networkx are conveniences that import export/ when called (their
# signatures are pinned to export's in test_api.py); no other arrow points backwards.
SANCTIONED = {("graphviz_autograd.graph.model", "export")}


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("layer", sorted(RULES))
def test_arrows_point_one_way(layer):
    allowed, banned = RULES[layer]
    problems = []
    for name, path in MODULES.items():
        if _layer(name) != layer:
            continue
        for imported in _imports(name, path, module_level=False):
            if imported.startswith(PKG + ".") or imported == PKG:
                if (imported != PKG and _layer(imported) not in allowed
                        and (name, _layer(imported)) not in SANCTIONED):
                    problems.append(f"{name} imports {imported}")
            elif imported.split(".")[0] in banned:
                problems.append(f"{name} imports {imported}")
    assert not problems, "\n".join(problems)


def test_torch_free_parts_and_the_dashboard_never_import_torch_at_module_level():
    torch_free = [n for n in MODULES if _layer(n) in ("graph", "store", "export", "dashboard")]
    torch_free += ["graphviz_autograd.diagnosis", "graphviz_autograd.diagnosis.findings",
                   "graphviz_autograd.diagnosis.recorded", "graphviz_autograd.diagnosis.scales",
                   "graphviz_autograd.diagnosis.blocked", "graphviz_autograd.diagnosis.update_rules",
                   "graphviz_autograd.testing",
                   "graphviz_autograd.testing.settings", "graphviz_autograd.pytest_plugin",
                   "graphviz_autograd.cli", "graphviz_autograd.errors"]
    code = ("import importlib, sys\n"
            f"for name in {sorted(set(torch_free))!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, f'{name} imported torch'\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_any_order(order):
    names = sorted(n for n in MODULES if not n.endswith("__main__"))     # that one runs the CLI
    if order == "reversed":
        names.reverse()
    code = ("import importlib\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_install_adds_only_the_graphviz_autograd_name(tmp_path):
    code = ("import importlib.util, graphviz_autograd.dashboard.app, graphviz_autograd.examples.models\n"
            "print([m for m in ('dashboard', 'examples') if importlib.util.find_spec(m) is not None])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_no_module_edits_sys_path_to_find_our_own_code():
    offenders = [name for name, path in MODULES.items()
                 if "sys.path.insert" in path.read_text(encoding="utf-8")
                 and name != "graphviz_autograd.cli.modelspec"]     # the user's spec, not ours
    assert not offenders, offenders
