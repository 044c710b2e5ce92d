"""The content of an endpoint's daemon lock file: written by the daemon, read by clients.

Line 1, written once the daemon holds the lock: ``<pid> <start ns> group=<gid>`` (a
``--group`` daemon) or ``<pid> <start ns> private``. The whole line is the daemon's
identity: it changes with every start, so a client notices a restart. Line 2, ``serving``,
is added once the daemon has recovered and answers requests. Every reader parses it here.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVING = b"serving\n"
PRIVATE = "private"


def identity_line(pid: int, start_ns: int, group: int | None) -> bytes:
    shared = PRIVATE if group is None else f"group={group}"
    return f"{pid} {start_ns} {shared}\n".encode()


@dataclass(frozen=True)
class LockContent:
    ident: str  # the first line ("" while the daemon has not written it yet)
    pid: int  # 0 when the file names none
    serving: bool
    # The group the daemon shares with, None when private; ``known`` False when the file
    # does not say (empty, or written by an ndsharray before 2.0.0 recorded it).
    group: int | None
    known: bool


def parse(data: bytes) -> LockContent:
    text = data.decode(errors="replace")
    ident, _, rest = text.partition("\n")
    words = ident.split()
    try:
        pid = int(words[0]) if words else 0
    except ValueError:
        pid = 0
    group: int | None = None
    known = False
    for word in words[2:]:
        if word == PRIVATE:
            known = True
        elif word.startswith("group=") and word[6:].isdigit():
            group, known = int(word[6:]), True
    return LockContent(ident, pid, rest.startswith("serving"), group, known)
