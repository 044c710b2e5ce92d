"""The ``ndsharray`` command: thin wrappers over library calls (the admin API), one per
command.

Exit codes: 0 ok, 1 operational error (one line on stderr), 2 usage error. A traceback is
a bug of ndsharray: please report it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
from typing import Any

import click
import numpy as np

from . import config, recording
from ._version import __version__
from .admin import (
    TagInfo,
    daemon_pid,
    daemon_running,
    daemon_stats,
    list_tags_and_notes,
    remove_tag,
    start_daemon,
    stop_daemon,
    tag_info,
)
from .bridge import cli as bridge_cli
from .bridge import endings
from .client import NdShArray
from .doctor import run_checks
from .errors import NdShArrayError, TagRemovedError, UsageError
from .protocol import check_tag
from .stranded import StrandedTag, describe, stranded_tags
from .table import render, terminal_width
from .units import format_size as _size
from .web.command import serve as serve_cmd  # (the web libraries load only when it runs)


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.0f} min"


def _latency(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.0f} us" if s < 0.001 else f"{s * 1000:.1f} ms"


def _writer(t: TagInfo) -> str:
    if t.writer_pid:
        return str(t.writer_pid)
    why = f": {t.writer_left_why}" if t.writer_left_why else ""
    return f"{t.writer_left or 'gone'} ({t.last_writer_pid}){why}" if t.last_writer_pid else "-"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else ("x".join(map(str, shape)) or "()")


def _frame_size(t: TagInfo) -> str:
    """The latest frame's size, and the slots' capacity when it is larger (layout 3)."""
    if t.capacity > t.nbytes:
        return f"{_size(t.nbytes)}/{_size(t.capacity)}"
    return _size(t.nbytes)


def _row(t: TagInfo) -> list[str]:
    return [
        t.tag, t.dtype or "-", _shape(t.shape), _frame_size(t) if t.dtype else "-", _writer(t),
        str(t.readers), str(t.writes), "-" if t.rate_hz is None else f"{t.rate_hz:.1f}",
        _age(t.last_write_age_s), _latency(t.max_read_latency_s),
        "-" if t.max_behind is None else str(t.max_behind), str(t.generation), str(t.dropped),
    ]


def _silence(*streams: Any) -> None:
    """Point the streams' file descriptors at /dev/null (where they have one)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams:
            try:
                os.dup2(null, stream.fileno())
            except (OSError, ValueError):  # no fd (a test runner's stream), or closed
                pass
    finally:
        os.close(null)


def _tag_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Check a TAG argument here, in the user's terms (not the protocol's)."""
    try:
        return check_tag(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_PROTOCOL_WORDING = re.compile(r"^op '\w+': field '(\w+)': ")


def _user_terms(exc: Exception) -> str:
    """An error message without the protocol's wording (``op 'remove': field 'tag': ...``)."""
    return _PROTOCOL_WORDING.sub(lambda m: f"invalid {m.group(1)}: ", str(exc))


class _Number(click.FloatRange):
    """A ``FloatRange`` that refuses NaN (which passes every range check: no comparison with
    it is true)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if out is not None and math.isnan(out):
            self.fail(f"{value!r} is NaN; give a number", param, ctx)
        return out


class _Cli(click.Group):
    """Library errors become one line in one place: the library's usage errors exit 2, its
    operational errors 1. Anything else (a KeyError, a ValueError from inside) is a bug of
    ndsharray, not the user's: it goes up with its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `ndsharray ls | head`: the reader went away. Stop quietly, as C tools do
            # (exit 141, as if killed by SIGPIPE), and keep Python's exit flush from failing.
            _silence(sys.stdout, sys.stderr)
            sys.exit(128 + signal.SIGPIPE)
        except UsageError as exc:  # a bad tag, file or value given: exit 2
            raise click.UsageError(str(exc), ctx) from None
        except (NdShArrayError, OSError, TimeoutError, ImportError) as exc:  # operational: exit 1
            raise click.ClickException(_user_terms(exc)) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar=config.ENV_ENDPOINT, default=None,
              help="The daemon's ZeroMQ endpoint (default: this user's daemon).")
@click.version_option(__version__, prog_name="ndsharray")
@click.pass_context
def main(ctx: click.Context, endpoint: str | None) -> None:
    """Share numpy arrays between processes by tag."""
    ctx.obj = config.resolve_endpoint(endpoint)


LS_HEADER = ["TAG", "DTYPE", "SHAPE", "SIZE", "WRITER", "READERS", "WRITES", "RATE HZ", "LAST WRITE",
             "AGE AT READ", "BEHIND", "GEN", "DROPPED"]
# On a narrow terminal these go first (ls --json keeps everything).
LS_DROP = ["GEN", "DROPPED", "SIZE", "WRITES", "AGE AT READ", "DTYPE", "BEHIND", "LAST WRITE", "READERS", "RATE HZ",
           "SHAPE", "WRITER"]


def _listing(endpoint: str, prefix: str) -> tuple[list[TagInfo], list[str], list[StrandedTag] | None]:
    """The tags under ``prefix``, the daemon's notes, and when no daemon runs (None when
    one does) the tags still streamed through a stopped daemon's segments: after `daemon
    stop`, clients go on without one, and ls says so, and who."""
    tags, notes = list_tags_and_notes(endpoint)
    tags = endings.annotate(endpoint, [t for t in tags if t.tag.startswith(prefix)])
    if tags or daemon_running(endpoint):
        return tags, notes, None
    return tags, notes, [t for t in stranded_tags(endpoint) if t.tag.startswith(prefix)]


def _ls_text(endpoint: str, prefix: str) -> str:
    tags, broken, stranded = _listing(endpoint, prefix)
    notes = "".join(f"\nnote: {n}" for n in broken)
    if stranded is not None:
        if stranded:
            return describe(endpoint, stranded) + ":\n" + render(
                ["TAG", "WRITER", "READERS"],
                [[t.tag, " ".join(map(str, t.writer_pids)) or "-", " ".join(map(str, t.reader_pids)) or "-"]
                 for t in stranded], terminal_width())[0]
        return f"no ndsharrayd runs at {endpoint}, so no tags - the first writer starts one"
    if not tags:
        where = f" under {prefix!r}" if prefix else ""
        return f"no tags{where} at {endpoint} - a writer creates one: NdShArray('name', array, r_w='w')" + notes
    width = terminal_width()
    text, dropped = render(LS_HEADER, [_row(t) for t in tags], width, LS_DROP)
    if dropped:
        hint = f"(hidden at {width} columns: {', '.join(dropped)}; ls --json has all)"
        text += "\n" + (hint if len(hint) <= (width or 0) else hint[: max(1, (width or 1) - 1)] + "~")
    return text + notes


@main.command("ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list for scripts (with no daemon running: the tags still streamed, '
                   'each marked "stranded": true).')
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--remote", is_flag=True, help="Tags exported by every bridge this host's bridges reach.")
@click.pass_obj
def ls(endpoint: str, prefix: str, as_json: bool, watch: bool, remote: bool) -> None:
    """List live tags (those starting with PREFIX)."""
    if remote:
        from .bridge.cli import print_remote
        return print_remote(endpoint, prefix, as_json)
    if as_json:
        tags, notes, stranded = _listing(endpoint, prefix)
        if stranded:  # the same facts as the text: the rows say "stranded", the note why
            notes = [*notes, describe(endpoint, stranded)]
            click.echo(json.dumps([t.as_json() for t in stranded], indent=2))
        else:
            click.echo(json.dumps([t.as_json() for t in tags], indent=2))
        for n in notes:
            click.echo(f"note: {n}", err=True)
        return
    if not watch:
        click.echo(_ls_text(endpoint, prefix))
        return
    try:
        while True:
            text = _ls_text(endpoint, prefix)
            click.clear()
            click.echo(f"{time.strftime('%H:%M:%S')}  ndsharray ls {prefix}  (Ctrl-C to stop)\n{text}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


main.add_command(bridge_cli.bridge)


@main.command("info")
@click.argument("tag", callback=_tag_arg)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def info(endpoint: str, tag: str, as_json: bool) -> None:
    """Everything the daemon knows about one tag."""
    (t,) = endings.annotate(endpoint, [tag_info(tag, endpoint)])
    if as_json:
        click.echo(json.dumps(t.as_json(), indent=2))
        return
    state = "alive" if t.writer_pid else ((t.writer_left or "gone") if t.last_writer_pid else "none yet")
    state += f": {t.writer_left_why}" if t.writer_left_why else ""
    rows = [
        ("tag", t.tag), ("dtype", t.dtype or "-"), ("shape", _shape(t.shape)),
        ("nbytes", f"{t.nbytes} ({_size(t.nbytes)})"),
        ("capacity", f"{t.capacity} ({_size(t.capacity)}) per slot: any frame up to it without a new "
                     f"generation; metadata up to {t.meta_capacity} bytes per frame"),
        ("latest meta", "-" if t.meta is None else t.meta),
        ("generation", str(t.generation)),
        ("segment", t.segment or "-"), ("slots", str(t.slots)),
        ("segment size", _size(t.size) if t.size else "-"),
        ("writer", f"pid {t.writer_pid or t.last_writer_pid or '-'} ({state})"),
        ("readers", f"{t.readers}" + (f" (pids {', '.join(map(str, t.reader_pids))})" if t.reader_pids else "")),
        ("writes", str(t.writes)),
        ("dropped", f"{t.dropped} (on_full='drop': readers pinned every slot)" if t.dropped else "0"),
        ("rate", "-" if t.rate_hz is None else f"{t.rate_hz:.1f} Hz"),
        ("last write", _age(t.last_write_age_s) + (" ago" if t.last_write_age_s is not None else "")),
    ]
    for s in t.reader_stats:
        rows.append((f"reader {s['pid']}", "has not read yet" if s["latency_s"] is None else (
            f"last frame read {_latency(s['latency_s'])} after its write, {_age(s['read_age_s'])} ago; "
            f"{s['behind']} write(s) behind")))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k.ljust(width)}  {v}")


@main.command("show")
@click.argument("tag", callback=_tag_arg)
@click.option("--png", "png", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the frame as a PNG (needs Pillow: ndsharray[image]).")
@click.option("--bgr", is_flag=True,
              help="With --png: the HxWx3/4 frame is BGR(A), OpenCV's channel order.")
@click.option("--timeout", type=_Number(min=0), default=2.0, show_default=True,
              help="Seconds to wait for a frame.")
@click.pass_obj
def show(endpoint: str, tag: str, png: str | None, bgr: bool, timeout: float) -> None:
    """Statistics and a preview of TAG's latest frame."""
    if bgr and not png:
        raise click.UsageError("--bgr says how to write the --png file; give --png FILE too")
    with NdShArray(tag, r_w="r", endpoint=endpoint) as r:
        status, a = r.read(copy=True, timeout=timeout)
        age, meta = r.read_time_ms, getattr(r, "meta", None)
    if not status:
        raise click.ClickException(f"no frame under {tag!r} within {timeout:g} s")
    click.echo(f"{tag}: {a.dtype} {_shape(a.shape)}, written {age:.1f} ms before this read")
    if meta is not None:
        click.echo(f"meta: {json.dumps(meta) if isinstance(meta, dict) else repr(meta)}")
    if a.dtype.kind in "biufc" and a.size:
        vals = a.astype(np.float64) if a.dtype.kind != "c" else np.abs(a)
        click.echo(f"min {np.nanmin(vals):.6g}  max {np.nanmax(vals):.6g}  mean {np.nanmean(vals):.6g}")
    preview = a if a.ndim <= 2 else a[(slice(0, 4), slice(0, 4))]
    if preview is not a:
        click.echo(f"top-left corner {_shape(preview.shape)}:")
    click.echo(np.array2string(preview, threshold=60, edgeitems=3, max_line_width=100))
    if png:
        from .imaging import save_png

        shape = save_png(a, png, bgr=bgr)
        click.echo(f"wrote {png} ({_shape(shape)} 8-bit{', from BGR' if bgr else ''})")


@main.command("record")
@click.argument("tag", callback=_tag_arg)
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--seconds", type=_Number(min=0, min_open=True), default=None,
              help="Stop after S seconds.")
@click.option("--timeout", type=_Number(min=0), default=10.0, show_default=True,
              help="Seconds to wait for the first frame.")
@click.option("--idle-timeout", type=_Number(min=0, min_open=True), default=None,
              help="Stop after this many seconds without a new frame (the writer stopped).")
@click.pass_obj
def record_cmd(endpoint: str, tag: str, file: str, frames: int | None, seconds: float | None,
               timeout: float, idle_timeout: float | None) -> None:
    """Capture every frame of TAG into FILE (.npy stacked, or .npz with timestamps)."""
    recording.check_path(file)  # before saying "recording"
    if frames is not None:
        with click.progressbar(length=frames, label=f"recording {tag}", file=sys.stderr) as bar:
            last = [0]

            def step(n: int) -> None:
                bar.update(n - last[0])
                last[0] = n

            rec = recording.record(tag, file, frames=frames, seconds=seconds, endpoint=endpoint,
                                   progress=step, first_frame_timeout=timeout, idle_timeout=idle_timeout)
    else:
        click.echo(f"recording {tag} into {file}" + (f" for {seconds:g} s" if seconds else " until Ctrl-C"),
                   err=True)
        rec = recording.record(tag, file, frames=frames, seconds=seconds, endpoint=endpoint,
                               first_frame_timeout=timeout, idle_timeout=idle_timeout)
    click.echo(f"recorded {rec.frames} frames of {rec.dtype} {_shape(rec.shape)} in {rec.seconds:.1f} s "
               f"to {rec.path}; {rec.dropped} dropped ({rec.stopped_because})")


@main.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("tag", callback=_tag_arg)
@click.option("--rate", type=_Number(min=0, min_open=True), default=None,
              help="Frames per second (default: the recorded timing, or 30 Hz for .npy).")
@click.option("--loop", is_flag=True, help="Start over at the end, until Ctrl-C.")
@click.pass_obj
def replay_cmd(endpoint: str, file: str, tag: str, rate: float | None, loop: bool) -> None:
    """Publish the frames of a recording under TAG (with a progress line on a terminal)."""
    done = [0]
    out = sys.stdout
    live = out.isatty()  # scripts and pipes get the one final line, as always
    start = last = time.monotonic()

    def step(n: int) -> None:
        nonlocal last
        done[0] = n
        now = time.monotonic()
        if live and now - last >= 0.25:
            last = now
            out.write(f"\rreplaying {file} into {tag}: {n} frames, {n / (now - start):.1f} Hz ")
            out.flush()

    try:
        n = recording.replay(file, tag, rate=rate, loop=loop, endpoint=endpoint, progress=step)
    except TagRemovedError:
        raise click.ClickException(
            f"replay stopped after {done[0]} frames: tag {tag!r} was removed (ndsharray rm) "
            "while it played; run ndsharray replay again to publish it anew") from None
    finally:
        if live and last > start:
            out.write("\r\x1b[K")  # clear the progress line
            out.flush()
    click.echo(f"replayed {n} frames from {file} into {tag}")


@main.command("rm")
@click.argument("tag", callback=_tag_arg)
@click.pass_obj
def rm(endpoint: str, tag: str) -> None:
    """Remove TAG: its writer gets an error on its next write; readers keep what they hold."""
    res = remove_tag(tag, endpoint)
    data = "" if res.segment else " (it had no data yet)"
    writer = f"; writer pid {res.writer_pid} will get TagRemovedError on its next write" \
        if res.writer_pid else ""
    click.echo(f"removed {tag}{data}{writer}")


@main.command("doctor")
@click.pass_obj
def doctor(endpoint: str) -> None:
    """Check the daemon, /dev/shm, logind and permissions; say what to fix."""
    checks = run_checks(endpoint)
    for c in checks:
        click.echo(f"{c.level:<4}  {c.what:<9}  {c.message}")
    if any(c.level == "FAIL" for c in checks):
        raise SystemExit(1)


@main.group("daemon")
def daemon_group() -> None:
    """Start, stop or check the daemon (it also starts by itself when a client needs it)."""


@daemon_group.command("status")
@click.pass_obj
def daemon_status(endpoint: str) -> None:
    """Exit 0 and describe the daemon if it runs; exit 1 if not."""
    pid = daemon_pid(endpoint)
    if pid is None:
        raise click.ClickException(f"no daemon serves {endpoint}")
    stats = daemon_stats(endpoint)
    click.echo(f"ndsharrayd pid {pid} serving {endpoint}: {stats.tags} tag(s), "
               f"{_size(stats.bytes)} in segments, up {stats.uptime_s:.0f} s")


@daemon_group.command("start")
@click.pass_obj
def daemon_start(endpoint: str) -> None:
    """Start a detached daemon unless one already runs."""
    click.echo(f"ndsharrayd pid {start_daemon(endpoint)} serving {endpoint}")


@daemon_group.command("stop")
@click.pass_obj
def daemon_stop(endpoint: str) -> None:
    """Stop the daemon; it removes every segment and its socket first."""
    pid = stop_daemon(endpoint)
    click.echo(f"stopped ndsharrayd pid {pid}" if pid else f"no daemon was serving {endpoint}")


main.add_command(serve_cmd)
