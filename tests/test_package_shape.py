"""The package's shape (issue 12): the ``NdShArray`` facade over a writer module and a
reader module, no import cycle inside ``ndsharray``, no import of the daemon package, and
modules and classes small enough to read (for the modules the split made)."""

from __future__ import annotations

import ast
import os
from typing import Any

import numpy as np
from conftest import Daemon

import ndsharray
from ndsharray.client import NdShArray
from ndsharray.reader import Reader
from ndsharray.writer import Writer

PACKAGE = os.path.dirname(os.path.abspath(ndsharray.__file__))
# The modules of the handle and its helpers: each small enough to read in one sitting.
MAX_MODULE_LINES = {m: 400 for m in ("client", "handle", "writer", "reader", "finder", "generations", "release",
                                           "registrar", "process", "arguments")}
MAX_CLASS_LINES = {m: 330 for m in ("handle", "writer", "reader", "finder", "release", "registrar")}  # about 300


def _imports(module: str) -> set[str]:
    """The modules ``ndsharray.<module>`` imports at run time (not under TYPE_CHECKING):
    ``ndsharray.x`` for the package's own, the top-level name for any other."""
    with open(os.path.join(PACKAGE, module + ".py")) as f:
        tree = ast.parse(f.read())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.add(node.module or "")
            elif node.module:
                out.add(f"ndsharray.{node.module}")
            else:  # from . import x, y
                out.update(f"ndsharray.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] != "ndsharray" or
            os.path.exists(os.path.join(PACKAGE, m.split(".")[1] + ".py"))}


def _graph() -> dict[str, set[str]]:
    mods = [f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py")]
    return {f"ndsharray.{m}": _imports(m) for m in mods}


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
    for mod, deps in graph.items():
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


def test_the_handle_modules_and_their_classes_stay_small() -> None:
    for mod, limit in MAX_MODULE_LINES.items():
        with open(os.path.join(PACKAGE, mod + ".py")) as f:
            lines = len(f.readlines())
        assert lines <= limit, f"ndsharray/{mod}.py has {lines} lines (limit {limit}): split it"
    for mod, limit in MAX_CLASS_LINES.items():
        with open(os.path.join(PACKAGE, mod + ".py")) as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                assert size <= limit, f"class {node.name} in ndsharray/{mod}.py has {size} lines (limit {limit})"


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
