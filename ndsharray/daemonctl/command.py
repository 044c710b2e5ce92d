"""The command that starts this installation's daemon, and where it finds its modules.

The daemon runs under ``python -I`` (no PYTHONPATH, no user site-packages, no working
folder on sys.path), so nothing planted in /tmp or named by the environment runs in its
place. But installs whose dependencies come from exactly those places (PYTHONPATH under
ROS/colcon, Nix, HPC modules, ``pip install --target``; ``pip install --user``) would then
start a daemon that cannot import click or zmq. So the client hands the daemon the folders
it imported the daemon's dependencies from itself: only those (never its whole sys.path,
whose first entry may be /tmp), absolute, in the client's order.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import stat
import sys

# What ndsharrayd imports beyond the standard library (pyproject's dependencies).
# ndsharrayd itself is never imported here: it sits beside ndsharray (editable or not).
DEPENDENCIES = ("zmq", "numpy", "click")

# Run by `python -I -c`. argv[2] is [front, back] in JSON (any folder name survives it).
# Front folders were ahead of the standard library in the client (PYTHONPATH): they go
# first; back folders came after it (user site, .pth additions): they go before the
# daemon's own site-packages, as in the client. argv[1] stays "ndsharrayd": tools that look
# for the daemon by its command line (ps, the tests' checks for stray daemons) still see it.
MAIN = ("import sys, json, site; front, back = json.loads(sys.argv.pop(2)); "
        "sys.argv[0] = sys.argv.pop(1); "
        "sites = set(site.getsitepackages()); "
        "at = next((i for i, p in enumerate(sys.path) if p in sites), len(sys.path)); "
        "sys.path[at:at] = [p for p in back if p not in sys.path]; "
        "sys.path[:0] = [p for p in front if p not in sys.path]; "
        "from ndsharrayd.__main__ import main; main()")


def daemon_command(*args: str) -> list[str]:
    """The argv that starts this installation's ndsharrayd with ``args``, immune to the
    caller's working folder and Python path settings (``python -I``), yet finding the
    dependencies where this process found them."""
    return [sys.executable, "-I", "-c", MAIN, "ndsharrayd", json.dumps(folders()), *args]


def _folder_of(module: str) -> str | None:
    """The sys.path folder ``module`` is (or would be) imported from; None for a namespace
    package, or a folder every user can write (/tmp as this process's sys.path[0]: a
    planted click.py there must not become the daemon's)."""
    mod = sys.modules.get(module)
    path: str | None
    if mod is not None:
        path = getattr(mod, "__file__", None)
    else:  # (click: found, not imported; never through "" = the working folder)
        spec = importlib.machinery.PathFinder.find_spec(
            module, [p for p in sys.path if os.path.isabs(p)])
        path = None if spec is None else spec.origin
    if not path or not os.path.isabs(path):
        return None
    folder = os.path.dirname(path)
    if os.path.basename(path).startswith("__init__."):
        folder = os.path.dirname(folder)  # a package: the folder holding it
    try:
        if os.stat(folder).st_mode & stat.S_IWOTH:
            return None
    except OSError:
        return None
    return folder


def folders() -> tuple[list[str], list[str]]:
    """(front, back): the folders holding ndsharray and the daemon's dependencies, split by
    whether they came before the standard library on this process's sys.path.

    The folder of *this* ndsharray always goes first, so the daemon started is the one
    installed beside it."""
    # (this file is ndsharray/daemonctl/command.py: three levels up is the folder holding ndsharray)
    home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = [f for f in map(_folder_of, DEPENDENCIES) if f is not None and f != home]
    order = {os.path.abspath(p or "."): i for i, p in reversed(list(enumerate(sys.path)))}
    stdlib = order.get(os.path.dirname(os.path.abspath(os.__file__)), len(sys.path))
    front, back = [home], list[str]()
    for f in sorted(dict.fromkeys(found), key=lambda f: order.get(f, -1)):
        (back if order.get(f, -1) > stdlib else front).append(f)
    return front, back
