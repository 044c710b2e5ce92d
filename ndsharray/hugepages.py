"""Whether the segments' tmpfs gives big frames huge pages (``ndsharray doctor``).

A writer's copy of a big frame into shared memory pays for its 4 KiB pages: at 1080p
(1,519 pages a slot, two slots in turn) the copy took a quarter less time on a tmpfs
mounted with ``huge=within_size`` (benchmarks/README.md, issue 16). The daemon reserves
a segment's pages with ``posix_fallocate`` before anyone maps it, so only a tmpfs that
allocates huge pages by itself (``huge=within_size`` or ``always``) gives them;
``huge=advise`` would need an madvise before the first touch. Pure functions of the mount
table and of the kernel's ``shmem_enabled``, which overrides every mount when it is
``deny`` or ``force``.
"""

from __future__ import annotations

import os

MOUNTS = "/proc/self/mounts"
SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
HUGE_POLICIES = ("always", "within_size")  # a tmpfs that gives a fallocate'd file huge pages


def _unescape(field: str) -> str:
    """/proc/mounts writes a space, tab, newline and backslash in a path as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def tmpfs_huge(folder: str, mounts: str, shmem_enabled: str) -> str | None:
    """The huge page policy (``never``, ``always``, ``within_size``, ``advise``) of the
    tmpfs holding ``folder`` (an absolute, resolved path), given the text of /proc/mounts
    and of ``shmem_enabled`` ("" when unknown); None when ``folder`` is not on a tmpfs."""
    best: tuple[int, str | None] = (-1, None)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, fstype, options = _unescape(fields[1]), fields[2], fields[3].split(",")
        inside = folder == point or folder.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best[0]:  # (the later of two mounts on one point is on top)
            huge = next((o[5:] for o in options if o.startswith("huge=")), "never")
            best = (len(point), huge if fstype == "tmpfs" else None)
    policy = best[1]
    forced = next((w[1:-1] for w in shmem_enabled.split() if w.startswith("[")), "")
    if policy is not None and forced in ("deny", "force"):
        return "never" if forced == "deny" else "always"
    return policy


def _read(path: str) -> str:
    """The file's text, its bytes decoded as paths are (os.fsdecode: a mount point in any
    encoding, which /proc/mounts writes as raw bytes, matches the folder's own name)."""
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read())
    except OSError:
        return ""


def folder_huge(folder: str) -> str | None:
    """tmpfs_huge() of this machine's ``folder``."""
    return tmpfs_huge(os.path.realpath(folder), _read(MOUNTS), _read(SHMEM_ENABLED))
