"""``ndsharray show``, ``record`` and ``replay``: a tag's frames, looked at, captured to a
file, or published from one."""

from __future__ import annotations

import json
import sys
import time

import click
import numpy as np

from .. import recording
from ..client import NdShArray
from ..errors import TagRemovedError
from .formats import shape_text
from .params import Number, tag_arg


@click.command("show")
@click.argument("tag", callback=tag_arg)
@click.option("--png", "png", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the frame as a PNG (needs Pillow: ndsharray[image]).")
@click.option("--bgr", is_flag=True,
              help="With --png: the HxWx3/4 frame is BGR(A), OpenCV's channel order.")
@click.option("--timeout", type=Number(min=0), default=2.0, show_default=True,
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
    click.echo(f"{tag}: {a.dtype} {shape_text(a.shape)}, written {age:.1f} ms before this read")
    if meta is not None:
        click.echo(f"meta: {json.dumps(meta) if isinstance(meta, dict) else repr(meta)}")
    if a.dtype.kind in "biufc" and a.size:
        vals = a.astype(np.float64) if a.dtype.kind != "c" else np.abs(a)
        click.echo(f"min {np.nanmin(vals):.6g}  max {np.nanmax(vals):.6g}  mean {np.nanmean(vals):.6g}")
    preview = a if a.ndim <= 2 else a[(slice(0, 4), slice(0, 4))]
    if preview is not a:
        click.echo(f"top-left corner {shape_text(preview.shape)}:")
    click.echo(np.array2string(preview, threshold=60, edgeitems=3, max_line_width=100))
    if png:
        from ..imaging import save_png

        shape = save_png(a, png, bgr=bgr)
        click.echo(f"wrote {png} ({shape_text(shape)} 8-bit{', from BGR' if bgr else ''})")


@click.command("record")
@click.argument("tag", callback=tag_arg)
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--seconds", type=Number(min=0, min_open=True), default=None,
              help="Stop after S seconds.")
@click.option("--timeout", type=Number(min=0), default=10.0, show_default=True,
              help="Seconds to wait for the first frame.")
@click.option("--idle-timeout", type=Number(min=0, min_open=True), default=None,
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
    click.echo(f"recorded {rec.frames} frames of {rec.dtype} {shape_text(rec.shape)} in {rec.seconds:.1f} s "
               f"to {rec.path}; {rec.dropped} dropped ({rec.stopped_because})")


@click.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("tag", callback=tag_arg)
@click.option("--rate", type=Number(min=0, min_open=True), default=None,
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
