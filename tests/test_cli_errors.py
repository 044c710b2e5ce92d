"""The CLI blames the user (exit 2) only for the library's own usage errors; any other
KeyError or ValueError is a fault of ndsharray and shows as one. It speaks to the daemon only
through the library's admin API."""

from __future__ import annotations

import ast
import os
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Daemon

from ndsharray import cli
from ndsharray.commands import tags
from ndsharray.errors import UsageError


@pytest.mark.parametrize("fault", [KeyError("tags"), ValueError("invalid literal for int()")])
def test_an_internal_key_or_value_error_is_a_fault_not_a_usage_error(
        daemon: Daemon, monkeypatch: Any, fault: Exception) -> None:
    def broken(endpoint: str | None = None) -> Any:
        raise fault  # (a bug inside the library, as the CLI would meet it)

    monkeypatch.setattr(tags, "list_tags_and_notes", broken)
    res = CliRunner().invoke(cli.main, ["ls"])
    assert res.exit_code != 2 and "Usage:" not in res.output, res.output
    assert res.exception is fault  # not swallowed: its traceback shows


def test_a_usage_error_of_the_library_is_exit_2(daemon: Daemon, monkeypatch: Any) -> None:
    def refuses(endpoint: str | None = None) -> Any:
        raise UsageError("give a prefix that names tags")

    monkeypatch.setattr(tags, "list_tags_and_notes", refuses)
    res = CliRunner().invoke(cli.main, ["ls"])
    assert res.exit_code == 2 and "give a prefix that names tags" in res.output, res.output


def test_the_cli_goes_through_the_admin_api_not_the_transport() -> None:
    folder = os.path.dirname(cli.__file__)
    commands = os.path.join(folder, "commands")
    paths = [os.path.join(folder, "cli.py")] + [
        os.path.join(commands, name) for name in sorted(os.listdir(commands)) if name.endswith(".py")]
    assert len(paths) > 3  # (cli.py and the commands' modules, every one)
    imported = set()
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[-1])
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert not imported & {"transport", "zmq"}, imported


def test_the_bridges_argument_mistakes_stay_usage_errors(daemon: Daemon) -> None:
    for args, says in [(["--export", "a*b"], "'*' must be a whole part"),
                       (["--export", "a", "--codec", "bogus"], "unknown codec 'bogus'"),
                       (["--name", "x/y", "--export", "a"], "bridge name 'x/y'")]:
        name = [] if "--name" in args else ["--name", "x"]
        res = CliRunner().invoke(cli.main, ["bridge", *name, *args])
        assert res.exit_code == 2 and says in res.output, (args, res.output, res.exception)
