"""The lock file's content, without a daemon: what a daemon writes parses back to who it is,
and files older daemons left (or a daemon killed before it wrote) still parse."""

from __future__ import annotations

import pytest

from ndsharray.daemonctl import lockfile


@pytest.mark.parametrize("group, pidns", [(None, None), (None, 4026531836), (1234, 4026531836)])
def test_what_a_daemon_writes_parses_back(group: int | None, pidns: int | None) -> None:
    line = lockfile.identity_line(4321, 1_700_000_000_000_000_000, group, pidns)
    for data in (line, line + lockfile.SERVING):
        got = lockfile.parse(data)
        assert (got.pid, got.group, got.known, got.pidns) == (4321, group, True, pidns)
        assert got.ident == line.decode().rstrip("\n")
        assert got.serving == (data != line)


@pytest.mark.parametrize("data, pid, known", [
    (b"", 0, False),  # taken, not yet written (or killed in between)
    (b"4321 17\n", 4321, False),  # before 2.0.0: no group, no namespace
    (b"4321 17\nserving\n", 4321, False),
    (b"junk\xff words\n", 0, False),
    (b"4321 17 group=x pidns=y\n", 4321, False),  # malformed words are unknown, not errors
])
def test_old_empty_or_garbled_content_parses_as_unknown(data: bytes, pid: int, known: bool) -> None:
    got = lockfile.parse(data)
    assert (got.pid, got.known, got.group, got.pidns) == (pid, known, None, None)
