"""Checks behind ``ndsharray doctor``: each says OK, or what is wrong and what to do."""

from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass

from . import config, daemonctl, hugepages, safefs, transport
from .errors import NdShArrayError, UnsafeFileError
from .layout import VERSION
from .procs import alive
from .protocol import PING
from .segment.files import shm_dir
from .segment.header import parse_header
from .stranded import describe, stranded_tags

MIN_FREE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Check:
    level: str  # "OK", "WARN" or "FAIL"
    what: str
    message: str


def check_daemon(endpoint: str) -> Check:
    try:
        state = daemonctl.daemon_state(endpoint)
    except UnsafeFileError as exc:  # (a folder others can write, a lock not ours)
        return Check("FAIL", "daemon", str(exc))
    if state is not None and state.elsewhere:
        return Check("FAIL", "daemon", str(daemonctl.other_namespace(endpoint, state)))
    if state is None:
        stranded = stranded_tags(endpoint)
        if stranded:
            return Check("WARN", "daemon", describe(endpoint, stranded))
        auto = "it starts by itself when a client needs it" if config.autostart_enabled() else \
            f"NDSHARRAY_AUTOSTART=0: start it with: ndsharrayd --endpoint {endpoint}"
        return Check("OK" if config.autostart_enabled() else "WARN", "daemon",
                     f"not running at {endpoint}; {auto}")
    try:
        info = transport.Connection(endpoint, timeout=2.0, retries=0).request(PING)
    except NdShArrayError as exc:
        return Check("FAIL", "daemon", f"holds the lock but does not answer: {exc}; "
                     "stop it (ndsharray daemon stop) and let a client start a new one")
    layout = info.layout
    if layout != VERSION:
        return Check("FAIL", "daemon", f"ndsharrayd {info.daemon} pid {info.pid} makes segments of "
                     f"layout {layout}, this ndsharray reads layout {VERSION}: stop it "
                     "(ndsharray daemon stop) and restart writers and readers with one version")
    return Check("OK", "daemon", f"ndsharrayd {info.daemon} (protocol {info.protocol}, layout {layout}) "
                 f"pid {info.pid} at {endpoint}")


def check_shm() -> Check:
    try:
        st = os.statvfs(shm_dir())
    except OSError as exc:
        return Check("FAIL", "/dev/shm", f"cannot stat {shm_dir()}: {exc}; ndsharray needs a tmpfs there")
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    msg = f"{size / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
    if free < MIN_FREE:
        return Check("WARN", "/dev/shm", f"{msg}: little room for frames. In Docker run with "
                     "--shm-size=1g (compose: shm_size: 1gb); on a host: "
                     f"sudo mount -o remount,size=4G {shm_dir()}")
    return Check("OK", "/dev/shm", msg)


def check_huge_pages() -> Check:
    """Frames of several MiB copy faster on huge pages; only the tmpfs's mount gives them."""
    folder = shm_dir()
    policy = hugepages.folder_huge(folder)
    if policy in hugepages.HUGE_POLICIES:
        return Check("OK", "pages", f"{folder} is a tmpfs with huge={policy}: frames of 2 MiB and "
                     "more sit on huge pages")
    if policy is None:
        return Check("OK", "pages", f"{folder} is not on a tmpfs (see {hugepages.MOUNTS}): page size unknown")
    return Check("OK", "pages", f"{folder} has 4 KiB pages (tmpfs huge={policy}); writes of frames of "
                 "several MiB take up to a quarter less time on huge pages: sudo mount -o "
                 f"remount,huge=within_size {folder} (or NDSHARRAY_SHM_DIR on a tmpfs mounted so)")


def check_remove_ipc() -> Check:
    """systemd-logind's RemoveIPC=yes deletes a user's /dev/shm files at their last logout."""
    value = None
    for path in ["/etc/systemd/logind.conf", *sorted(glob.glob("/etc/systemd/logind.conf.d/*.conf"))]:
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r"\s*RemoveIPC\s*=\s*(\S+)", line)
                    if m:
                        value = m.group(1).lower()
        except OSError:
            continue
    system_user = os.getuid() < 1000
    if value in ("no", "false", "0"):
        return Check("OK", "RemoveIPC", "systemd-logind keeps IPC objects at logout (RemoveIPC=no)")
    if system_user:
        return Check("OK", "RemoveIPC", f"uid {os.getuid()} is a system user; logind's RemoveIPC "
                     "does not apply")
    return Check("WARN", "RemoveIPC", "systemd-logind's RemoveIPC (default yes) deletes your "
                 "segments when your last session ends; for pipelines that outlive a login set "
                 "RemoveIPC=no in /etc/systemd/logind.conf, or run them as a system user")


def check_stale_segments(endpoint: str) -> Check:
    prefix = config.segment_prefix(endpoint)
    mine = [n for n in os.listdir(shm_dir()) if n.startswith(prefix)]
    if not mine or _running_or_untrusted(endpoint):
        return Check("OK", "segments", f"{len(mine)} segment(s) of this endpoint in {shm_dir()}")
    stale = foreign = 0
    for name in mine:
        try:
            # /dev/shm is everyone's: a planted FIFO must not block us, nor a link lead us
            # elsewhere, nor another user's file count as ours.
            fd = safefs.open_checked(os.path.join(shm_dir(), name), os.O_RDONLY, single_link=False)
        except UnsafeFileError:
            foreign += 1
            continue
        except OSError:
            stale += 1
            continue
        try:
            h = parse_header(os.pread(fd, 64 * 1024, 0), os.fstat(fd).st_size, name)
        except (OSError, NdShArrayError, ValueError):
            stale += 1
            continue
        finally:
            os.close(fd)
        if not alive(h.writer_pid):  # (0: its writer closed it)
            stale += 1
    others = (f"; {foreign} other file(s) under its prefix are not yours (links, FIFOs, another "
              "user's): left alone") if foreign else ""
    return Check("WARN", "segments", f"{len(mine) - foreign} segment(s) of {endpoint} but no daemon "
                 f"({stale} whose writer is gone): start one (ndsharray daemon start) - it adopts "
                 f"live ones and keeps the others' last frames for --orphan-ttl{others}")


def _closed_to_others(folder: str) -> str | None:
    """The first folder from ``folder`` up to / that other users (group or others) cannot
    search, or None when they can reach into ``folder``."""
    path = os.path.abspath(folder)
    while True:
        try:
            if not os.stat(path).st_mode & 0o011:
                return path
        except OSError:
            return None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _running_or_untrusted(endpoint: str) -> bool:
    try:
        return daemonctl.daemon_running(endpoint)
    except UnsafeFileError:
        return True  # the daemon check says why; no verdict on segments then


def check_socket_folder(endpoint: str) -> Check:
    """Judge by what another user can reach: connecting takes search access to every folder
    on the way and write access to the socket itself; replacing the socket (or planting one
    before the daemon starts) takes write access to its folder. A 0755 folder holding a
    0600 socket lets nobody in."""
    path = config.ipc_path(endpoint)
    if path is None:
        return Check("OK", "socket", f"{endpoint} is not an ipc endpoint")
    folder = os.path.dirname(path) or "."
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return Check("OK", "socket", f"{folder} does not exist yet; the daemon creates it 0700")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid():
        return Check("FAIL", "socket", f"{folder} belongs to uid {st.st_uid}, not you; use an "
                     "endpoint in a folder of your own (NDSHARRAY_ENDPOINT)")
    closed = _closed_to_others(folder)
    if closed is not None:
        return Check("OK", "socket", f"{path} is private: other users cannot enter {closed}")
    if mode & 0o022:
        return Check("WARN", "socket", f"{folder} is mode {mode:o}: other users can replace your "
                     f"daemon's socket or plant one before it starts; chmod 700 {folder}, or use "
                     "a folder of your own")
    try:
        smode = stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return Check("OK", "socket", f"{path} is private: the daemon creates it mode 600 in "
                     f"{folder} (mode {mode:o})")
    if smode & 0o002:
        return Check("WARN", "socket", f"{path} is mode {smode:o}: every user can connect to your "
                     f"daemon; chmod 600 {path}, or restart the daemon (ndsharray daemon stop)")
    if smode & 0o020:
        return Check("OK", "socket", f"{path} is shared with group {st.st_gid} (mode {smode:o}, "
                     "ndsharrayd --group)")
    return Check("OK", "socket", f"{path} is private (mode {smode:o}; folder mode {mode:o}): other "
                 "users cannot connect")


def run_checks(endpoint: str) -> list[Check]:
    return [check_daemon(endpoint), check_shm(), check_huge_pages(), check_remove_ipc(),
            check_stale_segments(endpoint), check_socket_folder(endpoint)]
