"""What an operator meets: the demo, rm, replay, daemon options, ls, doctor, the daemon's
log (issue 10, first-time user items 4, 5, 6, 8, 9, 10, 11, 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import config, transport
from ndsharray.cli import main
from ndsharray.dtypes import dtype_to_text
from ndsharray.segment.header import Layout
from ndsharray.units import format_size, parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ndsharray", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_demo_counts_only_its_own_segments(folder: str) -> None:
    # Another daemon's segment on the machine (same uid, another endpoint's prefix).
    other = config.segment_prefix(f"ipc://{folder}/other.sock") + "0123456789abcdef"
    fd = os.open(os.path.join("/dev/shm", other), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "demo.py")],
                             capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(os.path.join("/dev/shm", other))
    assert out.returncode == 0, out.stderr
    assert "reader: received" in out.stdout
    assert out.stdout.rstrip().endswith("segments left in /dev/shm: none"), out.stdout


def test_rm_says_what_it_removed_and_exits_1_when_there_was_nothing(daemon: Daemon) -> None:
    # A writer that has not written yet: its claim is removed, and it is told.
    w = ndsharray.NdShArray("nodata", r_w="w")
    out = cli("rm", "nodata")
    assert out.exit_code == 0
    assert out.output.strip() == (f"removed nodata (it had no data yet); writer pid {os.getpid()} "
                                  "will get TagRemovedError on its next write")
    try:
        w.write(np.zeros(3))
        raise AssertionError("the removed writer wrote")
    except ndsharray.TagRemovedError:
        pass
    w.close()
    # Readers waiting for a first writer: nothing to remove, and they stay counted.
    with ndsharray.NdShArray("waiting", r_w="r") as r:
        r.read()
        wait_until(lambda: any(t.tag == "waiting" and t.readers for t in ndsharray.list_tags()),
                   what="the reader registered")
        res = CliRunner().invoke(main, ["rm", "waiting"])
        assert res.exit_code == 1
        assert "tag 'waiting' has no data and no writer; nothing to remove (1 reader(s) wait" in res.output
        assert [t.readers for t in ndsharray.list_tags() if t.tag == "waiting"] == [1]
    res = CliRunner().invoke(main, ["rm", "never"])
    assert res.exit_code == 1 and "no tag 'never'" in res.output


def test_cli_errors_speak_of_tags_not_protocol_fields(daemon: Daemon) -> None:
    for cmd in (["rm", "bad tag!"], ["info", "bad tag!"], ["show", "bad tag!"]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 2, (cmd, res.output)
        assert "Invalid value for 'TAG': tag 'bad tag!' has characters outside" in res.output, res.output
        assert "op '" not in res.output and "field '" not in res.output


def test_replay_stopped_by_rm_says_so_in_cli_terms(daemon: Daemon, folder: str) -> None:
    path = os.path.join(folder, "loop.npy")
    np.save(path, np.arange(20.0).reshape(10, 2))
    proc = subprocess.Popen([sys.executable, "-m", "ndsharray", "replay", path, "looped", "--loop",
                             "--rate", "200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(t.tag == "looped" and t.writes > 5 for t in ndsharray.list_tags()),
                   what="replay writing")
        assert cli("rm", "looped").exit_code == 0
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "replay stopped after" in err and "was removed (ndsharray rm)" in err, err
    assert "run ndsharray replay again" in err
    assert "open a new NdShArray" not in err and "Traceback" not in err, err


def test_max_bytes_takes_suffixes_and_the_quota_error_counts_the_slots(folder: str, monkeypatch: Any) -> None:
    frame = np.zeros(26_600, np.uint8)
    need = Layout(frame.nbytes, 3, 1, len("q"), len(dtype_to_text(frame.dtype))).total_size
    assert 100_000 < need <= 100 * 1024  # refused by 100K (powers of 1000), taken by 100KiB
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    d = Daemon(folder, "--max-bytes", "100K").start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    try:
        with ndsharray.NdShArray("q", r_w="w", meta_capacity=0) as w:  # (slots of the frame alone)
            with pytest.raises(ndsharray.ResourceLimitError) as info:
                w.write(frame)
        assert (f"needs {format_size(need)} (3 slots x 26.0 KiB per frame + 20.0 KiB of header) but "
                "the daemon's quota (--max-bytes 97.7 KiB) leaves 97.7 KiB") in str(info.value), info.value
        assert "fewer slots" in str(info.value)
    finally:
        transport.close_all()
        assert d.stop() == 0
    d = Daemon(folder, "--max-bytes", "100KiB").start()
    try:
        with ndsharray.NdShArray("q", frame, "w", meta_capacity=0):
            pass
    finally:
        transport.close_all()
        assert d.stop() == 0
    bad = subprocess.run([sys.executable, "-m", "ndsharrayd", "--max-bytes", "50X", "--endpoint",
                          f"ipc://{folder}/none.sock"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'50X' is not a size" in bad.stderr and "KiB" in bad.stderr


def test_parse_size_units() -> None:
    assert parse_size("50M") == 50_000_000 and parse_size("50MiB") == 50 << 20
    assert parse_size("2gib") == 2 << 30 and parse_size("1.5G") == 1_500_000_000
    assert parse_size("4096") == 4096 and parse_size(" 3 KB ") == 3000
    for text in ("", "M", "5 MiBs", "-1K", "1e3"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(text)
    assert format_size(512) == "512 B" and format_size(60_022_784) == "57.2 MiB"


def _socket_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.split()[1:2] == ["socket"])


def test_doctor_judges_the_socket_by_what_other_users_can_reach(daemon: Daemon, folder: str) -> None:
    sock = daemon.endpoint[len("ipc://"):]
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert _socket_line(cli("doctor").output).startswith("OK")
    os.chmod(folder, 0o755)  # others can enter and list it, but the socket is 0600
    try:
        line = _socket_line(cli("doctor").output)
        assert line.startswith("OK") and "private (mode 600; folder mode 755)" in line, line
        os.chmod(sock, 0o666)  # now anyone can connect
        line = _socket_line(cli("doctor").output)
        assert line.startswith("WARN") and "every user can connect" in line, line
        os.chmod(sock, 0o600)
        os.chmod(folder, 0o777)  # anyone can replace the socket
        line = _socket_line(cli("doctor").output)
        assert line.startswith("WARN") and "can replace your daemon's socket" in line, line
    finally:
        os.chmod(folder, 0o700)


def test_show_png_bgr_swaps_opencv_channel_order(daemon: Daemon, folder: str) -> None:
    image = pytest.importorskip("PIL.Image")
    bgr = np.zeros((4, 5, 3), np.uint8) + np.array([10, 20, 30], np.uint8)  # blue 10, green 20, red 30
    bgra = np.zeros((4, 5, 4), np.uint8) + np.array([10, 20, 30, 40], np.uint8)
    with ndsharray.NdShArray("cv/bgr", bgr, "w"), ndsharray.NdShArray("cv/bgra", bgra, "w"), \
            ndsharray.NdShArray("cv/gray", np.zeros((4, 5), np.uint8), "w"):
        png = os.path.join(folder, "c.png")
        out = cli("show", "cv/bgr", "--png", png, "--bgr")
        assert out.exit_code == 0 and "from BGR" in out.output
        with image.open(png) as img:
            assert img.mode == "RGB" and img.getpixel((0, 0)) == (30, 20, 10)
        assert cli("show", "cv/bgr", "--png", png).exit_code == 0  # without it: taken as RGB
        with image.open(png) as img:
            assert img.getpixel((0, 0)) == (10, 20, 30)
        assert cli("show", "cv/bgra", "--png", png, "--bgr").exit_code == 0
        with image.open(png) as img:
            assert img.mode == "RGBA" and img.getpixel((0, 0)) == (30, 20, 10, 40)
        gray = CliRunner().invoke(main, ["show", "cv/gray", "--png", png, "--bgr"])
        assert gray.exit_code == 2 and "--bgr needs an HxWx3 or HxWx4 frame" in gray.output
        alone = CliRunner().invoke(main, ["show", "cv/bgr", "--bgr"])
        assert alone.exit_code == 2 and "give --png FILE too" in alone.output


def test_replay_shows_progress_on_a_terminal_only(daemon: Daemon, folder: str) -> None:
    import pty

    path = os.path.join(folder, "p.npy")
    np.save(path, np.arange(60.0).reshape(30, 2))
    args = [sys.executable, "-m", "ndsharray", "replay", path, "prog", "--rate", "40"]  # 0.75 s
    piped = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == f"replayed 30 frames from {path} into prog\n"
    main_fd, sub_fd = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdout=sub_fd, stderr=subprocess.PIPE)
        os.close(sub_fd)
        chunks = []
        while True:
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        proc.stderr.close()
    finally:
        os.close(main_fd)
    shown = b"".join(chunks).decode()
    assert f"\rreplaying {path} into prog: " in shown and " frames, " in shown and " Hz" in shown, shown
    assert shown.rstrip().endswith(f"replayed 30 frames from {path} into prog"), shown


def test_ls_fits_the_terminal_and_json_keeps_everything(daemon: Daemon, monkeypatch: Any) -> None:
    with ndsharray.NdShArray("camera/left", np.zeros((720, 1280, 3), np.uint8), "w"), \
            ndsharray.NdShArray("camera/left", r_w="r") as r:
        r.read()
        monkeypatch.delenv("COLUMNS", raising=False)
        full = cli("ls").output.splitlines()  # not a terminal: every column
        assert full[0].split("  ")[0] == "TAG" and "GEN" in full[0] and "AGE AT READ" in full[0]
        assert len(full) == 2 and len(full[0]) > 100
        for cols in (100, 80, 60, 40):
            monkeypatch.setenv("COLUMNS", str(cols))
            lines = cli("ls").output.splitlines()
            assert all(len(line) <= cols for line in lines), (cols, lines)
            assert lines[0].startswith("TAG") and lines[1].startswith("camera/left")
            assert "GEN" not in lines[0].split() and lines[2].startswith(f"(hidden at {cols} columns: GEN")
        monkeypatch.setenv("COLUMNS", "80")
        assert "WRITER" in cli("ls").output.splitlines()[0]
        (data,) = json.loads(cli("ls", "--json").output)
        assert set(data) == set(ndsharray.list_tags()[0].as_json())
        assert data["generation"] == 1 and data["size"] > 0 and data["max_read_latency_s"] is not None


def _daemon_start(endpoint: str, *args: str) -> None:
    from ndsharray.daemonctl import daemon_command

    started = subprocess.run(daemon_command("--endpoint", endpoint, "--detach", *args),
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr


def test_the_daemons_log_is_bounded_and_goes_with_a_clean_stop(folder: str, monkeypatch: Any) -> None:
    endpoint = f"ipc://{folder}/d.sock"
    log = config.log_path(endpoint)
    assert log == f"{folder}/d.sock.log"
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    _daemon_start(endpoint, "--log-level", "DEBUG", "--log-max-bytes", "4KiB")
    try:
        for i in range(60):  # each new tag logs a line of about 150 bytes
            ndsharray.NdShArray(f"log/t{i}", np.zeros(2), "w").close()
        sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if ".log" in n}
        assert set(sizes) == {"d.sock.log", "d.sock.log.1"}, sizes
        assert all(size <= 4096 + 1024 for size in sizes.values()), sizes  # (one record past the bound)
        with open(log) as f:
            assert "serving" not in f.read()  # (the first lines moved to .1, then went)
    finally:
        transport.close_all()
        assert cli("daemon", "stop").exit_code == 0
    assert sorted(os.listdir(folder)) == [], "a clean stop removes the log and its .1"
    # --keep-log (or NDSHARRAY_KEEP_LOG=1, which auto-started daemons inherit) keeps it
    monkeypatch.setenv("NDSHARRAY_KEEP_LOG", "1")
    _daemon_start(endpoint)
    assert cli("daemon", "stop").exit_code == 0
    assert sorted(os.listdir(folder)) == ["d.sock.log"]
    with open(log) as f:
        assert "stopped; removed 0 segment(s)" in f.read()


def test_the_log_stays_bounded_when_it_cannot_move_aside(folder: str, monkeypatch: Any) -> None:
    endpoint = f"ipc://{folder}/d.sock"
    os.mkdir(config.log_path(endpoint) + ".1")  # (planted: nothing can be renamed onto it)
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    _daemon_start(endpoint, "--log-level", "DEBUG", "--log-max-bytes", "4KiB")
    try:
        for i in range(60):
            ndsharray.NdShArray(f"log/t{i}", np.zeros(2), "w").close()
        assert os.path.getsize(config.log_path(endpoint)) <= 4096 + 1024
    finally:
        transport.close_all()
        assert cli("daemon", "stop").exit_code == 0
    assert sorted(os.listdir(folder)) == ["d.sock.log.1"]  # (the planted folder is not ours to remove)
