"""ndsharray doctor says whether big frames get huge pages: the huge= option of the tmpfs
holding the segments, which the kernel's shmem_enabled overrides when deny or force
(issue 16: a 1080p write took a quarter less time on a huge=within_size tmpfs)."""

from __future__ import annotations

import os
import pathlib

import pytest
from click.testing import CliRunner

from ndsharray import hugepages
from ndsharray.cli import main
from ndsharray.segment.files import shm_dir

MOUNTS = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev,size=8G 0 0
tmpfs /run/big\\040frames tmpfs rw,relatime,size=4G,huge=within_size 0 0
tmpfs /run/big\\040frames/small tmpfs rw,relatime,size=1G 0 0
tmpfs /mnt/adv tmpfs rw,huge=advise 0 0
tmpfs /mnt/adv tmpfs rw,huge=always 0 0
"""
NEVER = "always within_size advise [never] deny force"


@pytest.mark.parametrize(("folder", "shmem_enabled", "policy"), [
    ("/dev/shm", NEVER, "never"),  # no huge= option: 4 KiB pages
    ("/dev/shm/sub", NEVER, "never"),
    ("/run/big frames", NEVER, "within_size"),  # the mount's option, not the kernel's shmem_enabled
    ("/run/big frames/x", "", "within_size"),
    ("/run/big frames/small", NEVER, "never"),  # the innermost mount holding the folder
    ("/run/big framesx", NEVER, None),  # a path prefix that is not a parent folder: on / (ext4)
    ("/mnt/adv", NEVER, "always"),  # of two mounts on one point, the later one is on top
    ("/home/me", NEVER, None),
    ("/run/big frames", "always within_size advise never [deny] force", "never"),
    ("/dev/shm", "always within_size advise never deny [force]", "always"),
    ("/home/me", "always within_size advise never deny [force]", None),  # not a tmpfs at all
])
def test_the_policy_is_the_huge_option_of_the_tmpfs_holding_the_folder(
        folder: str, shmem_enabled: str, policy: str | None) -> None:
    assert hugepages.tmpfs_huge(folder, MOUNTS, shmem_enabled) == policy


def _pages_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.split()[1:2] == ["pages"])


def test_doctor_says_whether_big_frames_get_huge_pages(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NDSHARRAY_ENDPOINT", f"ipc://{folder}/d.sock")
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    for shm in (shm_dir(), folder):  # this machine's /dev/shm, and a test folder (a tmpfs or not)
        monkeypatch.setenv("NDSHARRAY_SHM_DIR", shm)
        line = _pages_line(CliRunner().invoke(main, ["doctor"], catch_exceptions=False).output)
        policy = hugepages.folder_huge(shm)  # (what this machine's mount table says: tested above)
        assert line.startswith("OK") and shm in line, line
        if policy is None:
            assert "not on a tmpfs" in line, line
        elif policy in hugepages.HUGE_POLICIES:
            assert f"huge={policy}: frames of 2 MiB and more sit on huge pages" in line, line
        else:
            assert f"4 KiB pages (tmpfs huge={policy})" in line, line
            assert f"sudo mount -o remount,huge=within_size {shm}" in line, line


def test_a_mount_table_naming_a_path_in_another_encoding_is_read(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel escapes only space, tab, newline and backslash in /proc/mounts: a mount
    # point named in Latin-1 (a USB stick's label, say) comes through as raw bytes.
    mounts = tmp_path / "mounts"
    mounts.write_bytes(b"tmpfs /media/caf\xe9 tmpfs rw,huge=always 0 0\n"
                       b"tmpfs /run/frames tmpfs rw,huge=within_size 0 0\n")
    monkeypatch.setattr(hugepages, "MOUNTS", str(mounts))
    assert hugepages.folder_huge("/run/frames/x") in ("within_size", "always", "never")
    assert hugepages.folder_huge(os.fsdecode(b"/media/caf\xe9")) is not None  # found, as the others
    assert hugepages.folder_huge("/home/nobody-here") is None
