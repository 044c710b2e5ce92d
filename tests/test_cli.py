"""The operator's commands: through click's CliRunner and as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import recording
from ndsharray.cli import main
from ndsharray.imaging import to_uint8_image


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ndsharray", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_ls_prefix_filter_and_json(daemon: Daemon) -> None:
    with ndsharray.NdShArray("camera/left", np.zeros((2, 2)), "w"), \
            ndsharray.NdShArray("camera/right", np.zeros(3), "w"), \
            ndsharray.NdShArray("imu", np.zeros(6), "w"):
        out = cli("ls", "camera/")
        assert out.exit_code == 0
        tags = [line.split()[0] for line in out.output.splitlines()[1:]]
        assert tags == ["camera/left", "camera/right"]
        data = json.loads(cli("ls", "--json", "imu").output)
        assert [d["tag"] for d in data] == ["imu"] and data[0]["shape"] == [6]
        assert "no tags under 'lidar/'" in cli("ls", "lidar/").output


def test_info_and_rate(daemon: Daemon) -> None:
    with ndsharray.NdShArray("cam", np.zeros((3, 4), np.uint16), "w") as w, \
            ndsharray.NdShArray("cam", r_w="r") as r:
        r.read()
        stop = threading.Event()

        def write_at_200hz() -> None:
            while not stop.is_set():
                w.write(np.zeros((3, 4), np.uint16))
                time.sleep(0.005)

        t = threading.Thread(target=write_at_200hz)
        t.start()
        try:
            info = wait_until(lambda: (i := ndsharray.admin.tag_info("cam")).rate_hz and i, what="a rate")
        finally:
            stop.set()
            t.join()
        assert 20 < info.rate_hz < 400
        out = cli("info", "cam")
        assert out.exit_code == 0
        fields = dict(line.split(None, 1) for line in out.output.splitlines() if line.strip())
        assert fields["dtype"] == "uint16" and fields["shape"] == "3x4" and fields["slots"] == "3"
        assert fields["writer"] == f"pid {os.getpid()} (alive)"
        assert fields["readers"] == f"1 (pids {os.getpid()})"
        missing = CliRunner().invoke(main, ["info", "nope"])
        assert missing.exit_code == 1 and "no tag 'nope'" in missing.output
        w.close()  # a clean close is not a crash (test_crash sees "died")
        assert f"pid {os.getpid()} (closed)" in cli("info", "cam").output
        assert f"closed ({os.getpid()})" in cli("ls").output


def test_ls_shows_how_late_and_how_far_behind_readers_are(daemon: Daemon, puppets: Any) -> None:
    reader = puppets()
    with ndsharray.NdShArray("lag", np.zeros(4), "w") as w:
        reader(op="open", name="r", tag="lag", rw="r")
        assert reader(op="read", name="r")["status"]
        (t,) = ndsharray.list_tags()
        assert t.max_behind == 0 and t.max_read_latency_s is not None
        assert 0 <= t.max_read_latency_s < 60
        (stats,) = t.reader_stats
        assert stats["pid"] == reader.pid and stats["behind"] == 0
        for k in range(3):
            w.write(np.full(4, float(k)))  # the reader does not read these
        (t,) = ndsharray.list_tags()
        assert t.max_behind == 3
        header, row = cli("ls").output.splitlines()
        assert "AGE AT READ" in header and "BEHIND" in header
        assert row.split()[-3:] == ["3", "1", "0"]  # BEHIND, GEN, DROPPED
        out = cli("info", "lag").output
        assert f"reader {reader.pid}" in out and "3 write(s) behind" in out
        reader(op="close", name="r")
        (t,) = ndsharray.list_tags()
        assert t.reader_stats == () and t.max_behind is None  # a closed reader clears its row
    # A reader closed while it still holds an array keeps its pins, but leaves ls at once.
    with ndsharray.NdShArray("lag2", np.zeros(4), "w") as w, ndsharray.NdShArray("lag2", r_w="r") as r:
        held = r.read()[1]
        assert [s["pid"] for s in ndsharray.tag_info("lag2").reader_stats] == [os.getpid()]
        r.close()
        w.write(np.ones(4))
        assert ndsharray.tag_info("lag2").reader_stats == ()
        assert held.tolist() == [0.0] * 4


def test_show_prints_stats_and_writes_a_png(daemon: Daemon, folder: str) -> None:
    from PIL import Image

    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    gray = np.linspace(-1.0, 3.0, 20 * 30).reshape(20, 30).astype(np.float32)
    with ndsharray.NdShArray("rgb", frame, "w"), ndsharray.NdShArray("gray", gray, "w"):
        png = os.path.join(folder, "rgb.png")
        out = run("show", "rgb", "--png", png)  # a real subprocess
        assert out.returncode == 0, out.stderr
        assert "uint8 48x64x3" in out.stdout and f"max {frame.max()}" in out.stdout
        with Image.open(png) as img:
            assert img.mode == "RGB" and np.array_equal(np.asarray(img), frame)
        png = os.path.join(folder, "gray.png")
        assert cli("show", "gray", "--png", png).exit_code == 0
        with Image.open(png) as img:
            pixels = np.asarray(img)
        assert img.mode == "L" and pixels.min() == 0 and pixels.max() == 255
        assert np.array_equal(pixels, to_uint8_image(gray))
    bad = CliRunner().invoke(main, ["show", "nothing", "--timeout", "0.1"])
    assert bad.exit_code == 1 and "no frame under 'nothing'" in bad.output
    for cmd in (["show", "x"], ["record", "x", os.path.join(folder, "x.npz")]):
        # read() refuses a negative timeout: the CLI says so in its own terms.
        bad = CliRunner().invoke(main, [*cmd, "--timeout", "-1"])
        assert bad.exit_code == 2 and "--timeout" in bad.output and bad.exception is not None
        assert not isinstance(bad.exception, ValueError)


def test_to_uint8_image_rules() -> None:
    assert to_uint8_image(np.array([[True, False]])).tolist() == [[255, 0]]
    assert to_uint8_image(np.array([[0.0, np.nan, 2.0]])).tolist() == [[0, 0, 255]]
    assert to_uint8_image(np.full((2, 2), 7, np.int32)).tolist() == [[0, 0], [0, 0]]
    assert to_uint8_image(np.zeros((2, 2, 1), np.uint16)).shape == (2, 2)
    with pytest.raises(ValueError, match="HxW"):
        to_uint8_image(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_record_then_replay_round_trips_every_frame(daemon: Daemon, folder: str, suffix: str) -> None:
    path = os.path.join(folder, "rec" + suffix)
    frames = [np.full((8, 6), k, np.int16) for k in range(40)]
    with ndsharray.NdShArray("cam", frames[0], "w") as w:
        # The recording starts at whatever frame is latest when it attaches and takes 30
        # consecutive ones; --seconds only as a safety net.
        rec = subprocess.Popen([sys.executable, "-m", "ndsharray", "record", "cam", path, "--frames", "30",
                                "--seconds", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: any(t.tag == "cam" and t.readers for t in ndsharray.list_tags()),
                   what="the recorder to attach")  # its first read returns frame 0, the latest
        try:
            for f in frames[1:]:
                w.write(f)
                # Paced by the recorder, not a clock: a stalled recorder must not drop frames.
                wait_until(lambda: rec.poll() is not None or ndsharray.tag_info("cam").max_behind == 0,
                           what="the recorder to take the frame")
                if rec.poll() is not None:
                    break
            out, err = rec.communicate(timeout=60)
        finally:
            rec.kill()
    assert rec.returncode == 0, err
    assert "recorded 30 frames of int16 8x6" in out and "0 dropped" in out
    got, stamps = recording.load(path)
    first = int(got[0, 0, 0])
    assert first <= 10 and np.array_equal(got, np.stack(frames[first:first + 30]))
    if suffix == ".npz":
        assert stamps is not None and stamps[0] == 0 and (np.diff(stamps) > 0).all()
    # Replay into another tag; every frame must be published, in order. The tag is primed
    # with one frame of the same shape and dtype, so the replay takes over its segment and
    # continues its write count: the n-th replayed frame is write n + 1. A reader that was
    # there before checks each frame it gets against its count (on a loaded machine it may
    # sleep through one; the counts still show that each was published, none skipped).
    with ndsharray.NdShArray("again", np.full((8, 6), -1, np.int16), "w"):
        pass
    with ndsharray.NdShArray("again", r_w="r") as r:
        assert int(r.read()[1][0, 0]) == -1 and r.write_count == 1
        seen: list[tuple[int, int]] = []  # (write count, frame value)

        def collect() -> None:
            for frame in r:
                seen.append((r.write_count, int(frame[0, 0])))
                if r.write_count >= 31:
                    return

        t = threading.Thread(target=collect, daemon=True)
        t.start()
        out2 = run("replay", path, "again", "--rate", "25")  # (40 ms apart: a reader keeps up)
        t.join(30)
        assert out2.returncode == 0 and "replayed 30 frames" in out2.stdout
        assert seen and seen[-1] == (31, first + 29), seen
        assert all(value == first + count - 2 for count, value in seen), f"frames out of place: {seen}"
        assert [c for c, _ in seen] == sorted({c for c, _ in seen}), seen


def test_rm_removes_the_tag_and_stops_its_writer(daemon: Daemon) -> None:
    w = ndsharray.NdShArray("gone", np.zeros(3), "w")
    r = ndsharray.NdShArray("gone", r_w="r")
    status, held = r.read()
    out = cli("rm", "gone")
    assert out.exit_code == 0 and f"writer pid {os.getpid()}" in out.output
    assert not any(t.tag == "gone" for t in ndsharray.list_tags())
    with pytest.raises(ndsharray.TagRemovedError, match="ndsharray rm"):
        w.write(np.ones(3))
    assert held.tolist() == [0, 0, 0]  # readers keep what they hold
    assert CliRunner().invoke(main, ["rm", "gone"]).exit_code == 1
    w.close()
    r.close()


def test_doctor_and_daemon_control(folder: str, monkeypatch: Any) -> None:
    endpoint = f"ipc://{folder}/ctl.sock"
    monkeypatch.setenv("NDSHARRAY_ENDPOINT", endpoint)
    assert CliRunner().invoke(main, ["daemon", "status"]).exit_code == 1
    out = cli("doctor")
    assert out.exit_code == 0 and "not running" in out.output and "/dev/shm" in out.output
    started = run("daemon", "start")
    assert started.returncode == 0, started.stderr
    try:
        status = run("daemon", "status")
        assert status.returncode == 0 and "serving" in status.stdout
        lines = cli("doctor").output.splitlines()
        assert lines[0].startswith("OK    daemon     ndsharrayd")
        assert any(line.startswith("OK    socket") and "private" in line for line in lines)
    finally:
        stopped = run("daemon", "stop")
    assert stopped.returncode == 0 and "stopped ndsharrayd pid" in stopped.stdout
    assert run("daemon", "status").returncode == 1
    assert sorted(os.listdir(folder)) == []  # no socket, lock, start lock or log left


def test_record_stops_when_the_writer_goes_quiet(daemon: Daemon, folder: str) -> None:
    path = os.path.join(folder, "quiet.npy")
    with ndsharray.NdShArray("quiet", np.arange(3), "w"):
        rec = recording.record("quiet", path, frames=100, idle_timeout=0.3)
    assert rec.frames == 1 and rec.stopped_because == "no new frame for 0.3 s"
    assert np.load(path).tolist() == [[0, 1, 2]]
    assert not os.path.exists(path + ".part")


def test_an_interrupt_while_saving_a_recording_leaves_no_truncated_file(
        daemon: Daemon, folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(folder, "cut.npz")

    def save_half_then_interrupt(file: Any, **arrays: Any) -> None:
        f = open(file, "wb") if isinstance(file, str) else file  # noqa: SIM115
        f.write(b"PK\x03\x04 half a zip")
        f.flush()
        raise KeyboardInterrupt

    with ndsharray.NdShArray("cut", np.arange(3), "w"):
        monkeypatch.setattr(np, "savez", save_half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            recording.record("cut", path, frames=1)
    assert [n for n in os.listdir(folder) if n.startswith("cut")] == []


def test_bad_arguments_are_one_usage_error_not_a_traceback(daemon: Daemon, folder: str) -> None:
    empty = os.path.join(folder, "nofr.npz")
    np.savez(empty, other=np.zeros(2))
    cases = [
        (["show", "a//b"], "a//b"),
        (["record", "cam", os.path.join(folder, "out.txt")], f"not {os.path.join(folder, 'out.txt')!r}"),
        (["replay", empty, "cam"], "frames"),
        (["show", "cam", "--timeout", "nan"], "NaN"),
    ]
    for args, says in cases:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert says in res.output and "Traceback" not in res.output, (args, res.output)
        assert "recording" not in res.output  # refused before it claims to record


def test_record_waits_for_a_first_frame_no_longer_than_its_seconds(daemon: Daemon, folder: str) -> None:
    res = CliRunner().invoke(main, ["record", "nope", os.path.join(folder, "x.npz"), "--seconds", "0.2"])
    assert res.exit_code == 1 and "no frame was published under 'nope' within 0.2 s" in res.output, res.output


def test_output_into_a_closed_pipe_ends_quietly(daemon: Daemon) -> None:
    # `ndsharray ls | head -1`: head exits, and ls must not print an error about it.
    with ndsharray.NdShArray("piped", np.zeros(2), "w"):
        r, w = os.pipe()
        os.close(r)
        try:
            proc = subprocess.run([sys.executable, "-m", "ndsharray", "ls"], stdout=w,
                                  stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_doctor_counts_a_closed_writers_segment_as_stale(folder: str, monkeypatch: Any) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv("NDSHARRAY_ENDPOINT", d.endpoint)
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    ndsharray.NdShArray("gone", np.zeros(2), "w").close()  # its header now names writer pid 0
    assert d.proc is not None
    d.proc.kill()  # a crash leaves the segment behind
    d.proc.wait()
    try:
        out = cli("doctor").output
        assert "1 segment(s)" in out and "(1 whose writer is gone)" in out, out
    finally:
        again = Daemon(folder).start()  # it keeps the segment as an orphan; its stop removes it
        assert again.stop() == 0
