"""The package's shape (issue 12): the ``NdShArray`` facade over a writer module and a
reader module, no import cycle in either package, no import of the daemon package from the
client, and every module and class of both packages small enough to read."""

from __future__ import annotations

import ast
import os
import re
from typing import Any

import numpy as np
from conftest import Daemon

import ndsharray
from ndsharray.client import NdShArray
from ndsharray.reader import Reader
from ndsharray.writer import Writer

PACKAGE = os.path.dirname(os.path.abspath(ndsharray.__file__))
ROOT = os.path.dirname(PACKAGE)
PACKAGES = ("ndsharray", "ndsharrayd")
# Issue 12: small well-named modules. The C files aside, no module over about 400 lines and
# no class over about 300 (the limits the split reached; raise neither to let one grow).
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def _modules() -> dict[str, str]:
    """Every Python module of both packages (subpackages too): dotted name -> path."""
    out = {}
    for pkg in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, pkg)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """The modules ``module`` imports at run time (not under TYPE_CHECKING; imports inside
    functions count): the dotted name for the packages' own (C modules too, outside the graph),
    the top-level name for any other."""
    with open(path) as f:
        tree = ast.parse(f.read())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    here = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name if a.name in known else a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:  # `from . import x`: the module x (a C module: outside the graph)
                sub = f"{base}.{a.name}"
                if sub in known or not node.module:
                    out.add(sub)
                else:
                    out.add(base if base.split(".")[0] in PACKAGES else base.split(".")[0])
    return out - {module}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, path, set(mods)) for m, path in mods.items()}


def test_the_facade_sits_over_a_writer_module_and_a_reader_module() -> None:
    graph = _graph()
    assert {"ndsharray.writer", "ndsharray.reader"} <= graph["ndsharray.client"]
    assert "ndsharray.handle" in graph["ndsharray.writer"] and "ndsharray.handle" in graph["ndsharray.reader"]
    # Neither role needs the other, nor the facade.
    assert not {"ndsharray.reader", "ndsharray.client"} & graph["ndsharray.writer"]
    assert not {"ndsharray.writer", "ndsharray.client"} & graph["ndsharray.reader"]
    assert issubclass(Writer, NdShArray) and issubclass(Reader, NdShArray)
    assert ndsharray.NdShArray is NdShArray


def test_the_package_has_no_import_cycle_and_never_imports_the_daemon() -> None:
    graph = _graph()
    assert {"ndsharray.segment.writer", "ndsharrayd.server", "ndsharray.bridge.exporter"} <= graph.keys()
    for mod, deps in graph.items():
        if mod.split(".")[0] == "ndsharray":
            assert not any(d.split(".")[0] == "ndsharrayd" for d in deps), f"{mod} imports the daemon package"
    # Depth-first search for a back edge among the package's own modules.
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(d for d in graph[mod] if d in graph):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])


def test_no_module_and_no_class_grows_past_the_size_limits() -> None:
    problems = []
    for path in sorted(_modules().values()):
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            text = f.read()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{rel} has {lines} lines (limit {MAX_MODULE_LINES}): split it by its jobs")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    problems.append(f"class {node.name} in {rel} has {size} lines (limit {MAX_CLASS_LINES})")
    assert not problems, "\n".join(problems)


def test_the_constructor_gives_the_role_asked_for(daemon: Daemon) -> None:
    with NdShArray("shape/w", np.arange(3), "w") as w, NdShArray("shape/w", r_w="R") as r:
        assert type(w) is Writer and type(r) is Reader
        assert isinstance(w, NdShArray) and isinstance(r, NdShArray)
        assert (w.access, r.access) == ("w", "r")
        assert r.read()[0]
    # Each role's class opens that role, without r_w or with the matching one.
    with Writer("shape/w2", np.arange(2)) as w2, Reader("shape/w2", r_w="r") as r2:
        assert r2.read()[0] and w2.write_count == 1


def test_a_subclass_of_the_facade_gets_the_role_too(daemon: Daemon) -> None:
    # ndsharray 1.x code may subclass NdShArray: its objects are still of its class.
    class Camera(NdShArray):
        def latest(self) -> Any:
            return self.read()[1]

    with Camera("shape/sub", np.arange(4), "w") as w, Camera("shape/sub", r_w="r") as r:
        assert isinstance(w, Camera) and isinstance(w, Writer) and not isinstance(w, Reader)
        assert isinstance(r, Camera) and isinstance(r, Reader)
        assert r.latest().tolist() == [0, 1, 2, 3]
        with Camera("shape/sub", r_w="r") as r2:
            assert type(r2) is type(r)  # (one class per role, made once)


def test_only_the_process_module_registers_fork_and_exit_hooks() -> None:
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
            hooks = calls & {"os.register_at_fork", "register_at_fork", "atexit.register"}
            rel = os.path.relpath(path, PACKAGE)
            assert not hooks or rel == "process.py", f"ndsharray/{rel} calls {hooks}: use ndsharray.process"


def test_fork_steps_run_in_the_documented_order(monkeypatch: Any) -> None:
    from ndsharray import process

    order: list[str] = []

    def recorder(step: str, hook: Any) -> Any:
        def run() -> None:
            order.append(f"{step}:{process.pid() == os.getpid()}")
            hook()
        return run

    for step, hook in list(process._on_fork.items()):
        monkeypatch.setitem(process._on_fork, step, recorder(step, hook))
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the steps as they ran, and leave at once
        try:
            os.write(wfd, ",".join(order).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as got:
        ran = got.read()
    os.waitpid(pid, 0)
    assert ran.split(",") == [f"{s}:True" for s in process.FORK_STEPS]  # each saw the child's pid
    assert order == []  # (nothing ran in the parent)


def test_pyproject_lists_every_subpackage() -> None:
    # A subpackage missing from the list is missing from a wheel (an editable install, as in
    # the tests, still finds it): ndsharray.segment and ndsharray.commands came with the split.
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        listed = re.search(r"^packages = \[(.*)\]$", f.read(), re.M)
    assert listed is not None, "pyproject.toml has no packages = [...] line"
    folders = {m for m, path in _modules().items() if path.endswith("__init__.py")}
    assert folders == set(re.findall(r'"([\w.]+)"', listed.group(1)))
