"""``ndsharray ls``, ``info`` and ``rm``: what the daemon knows of the tags, as tables for
people and JSON for scripts."""

from __future__ import annotations

import json
import time

import click

from ..admin import TagInfo, daemon_running, list_tags_and_notes, remove_tag, tag_info
from ..stranded import StrandedTag, describe, stranded_tags
from ..table import render, terminal_width
from ..units import format_size as _size
from .formats import age, latency, shape_text
from .params import tag_arg


def _writer(t: TagInfo) -> str:
    if t.writer_pid:
        return str(t.writer_pid)
    why = f": {t.writer_left_why}" if t.writer_left_why else ""
    return f"{t.writer_left or 'gone'} ({t.last_writer_pid}){why}" if t.last_writer_pid else "-"



def _frame_size(t: TagInfo) -> str:
    """The latest frame's size, and the slots' capacity when it is larger (layout 3)."""
    if t.capacity > t.nbytes:
        return f"{_size(t.nbytes)}/{_size(t.capacity)}"
    return _size(t.nbytes)


def _row(t: TagInfo) -> list[str]:
    return [
        t.tag, t.dtype or "-", shape_text(t.shape), _frame_size(t) if t.dtype else "-", _writer(t),
        str(t.readers), str(t.writes), "-" if t.rate_hz is None else f"{t.rate_hz:.1f}",
        age(t.last_write_age_s), latency(t.max_read_latency_s),
        "-" if t.max_behind is None else str(t.max_behind), str(t.generation), str(t.dropped),
    ]


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
    tags = [t for t in tags if t.tag.startswith(prefix)]
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


@click.command("ls")
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
        from ..bridge.cli import print_remote
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



@click.command("info")
@click.argument("tag", callback=tag_arg)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def info(endpoint: str, tag: str, as_json: bool) -> None:
    """Everything the daemon knows about one tag."""
    t = tag_info(tag, endpoint)
    if as_json:
        click.echo(json.dumps(t.as_json(), indent=2))
        return
    state = "alive" if t.writer_pid else ((t.writer_left or "gone") if t.last_writer_pid else "none yet")
    state += f": {t.writer_left_why}" if t.writer_left_why else ""
    rows = [
        ("tag", t.tag), ("dtype", t.dtype or "-"), ("shape", shape_text(t.shape)),
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
        ("last write", age(t.last_write_age_s) + (" ago" if t.last_write_age_s is not None else "")),
    ]
    for s in t.reader_stats:
        rows.append((f"reader {s['pid']}", "has not read yet" if s["latency_s"] is None else (
            f"last frame read {latency(s['latency_s'])} after its write, {age(s['read_age_s'])} ago; "
            f"{s['behind']} write(s) behind")))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k.ljust(width)}  {v}")



@click.command("rm")
@click.argument("tag", callback=tag_arg)
@click.pass_obj
def rm(endpoint: str, tag: str) -> None:
    """Remove TAG: its writer gets an error on its next write; readers keep what they hold."""
    res = remove_tag(tag, endpoint)
    data = "" if res.segment else " (it had no data yet)"
    writer = f"; writer pid {res.writer_pid} will get TagRemovedError on its next write" \
        if res.writer_pid else ""
    click.echo(f"removed {tag}{data}{writer}")
