"""The daemon's replies: one typed form each, checked on decode; the op table is the one
list of operations, for the daemon's dispatch and the client's decoding alike."""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Daemon

import ndsharray
from ndsharray import protocol, replies
from ndsharray.cli import main
from ndsharray.dtypes import dtype_to_text
from ndsharray.errors import ProtocolError
from ndsharrayd.handlers import Handlers

ROW: dict[str, Any] = {
    "tag": "cam", "dtype": "uint8", "descr": "'|u1'", "shape": [2, 3], "nbytes": 6,
    "writer_pid": 10, "last_writer_pid": 10, "writer_left": None, "writer_left_why": None, "readers": 1,
    "reader_pids": [11], "writes": 4, "last_write_age_s": 0.5, "generation": 1,
    "segment": "nds-x-0123", "slots": 3, "size": 8192, "rate_hz": 2.0,
    "max_read_latency_s": 0.001, "max_behind": 0, "dropped": 0, "capacity": 6, "meta_capacity": 0, "meta": None,
    "reader_stats": [{"pid": 11, "latency_s": 0.001, "behind": 0, "read_age_s": 0.2}],
}


def listing(**row: Any) -> dict[str, Any]:
    return {"tags": [{**ROW, **row}], "broken": []}


def test_a_list_reply_decodes_into_its_typed_rows() -> None:
    got = protocol.LIST.reply_from(listing())
    (t,) = got.tags
    assert isinstance(t, replies.TagInfo) and t.shape == (2, 3) and t.reader_pids == (11,)
    assert t.descr == "'|u1'" and t.reader_stats[0]["pid"] == 11
    assert got.to_wire() == listing()  # and back, unchanged


@pytest.mark.parametrize(("field", "value", "says"), [
    ("writes", "4", "field 'tags[0].writes': expected int, got '4'"),
    ("writes", True, "field 'tags[0].writes': expected int, got True"),
    ("shape", "2x3", "field 'tags[0].shape': expected a list"),
    ("shape", [2, None], "field 'tags[0].shape[1]': expected int, got None"),
    ("last_write_age_s", "soon", "field 'tags[0].last_write_age_s': expected a number"),
    ("reader_stats", [{"pid": 11, "latency_s": None, "behind": None}],
     "field 'tags[0].reader_stats[0].read_age_s': missing"),
])
def test_a_mistyped_field_is_a_protocol_error_naming_op_and_field(field: str, value: Any, says: str) -> None:
    with pytest.raises(ProtocolError, match="^reply to 'list': ") as err:
        protocol.LIST.reply_from(listing(**{field: value}))
    assert says in str(err.value)


def test_a_missing_field_is_a_protocol_error_naming_op_and_field() -> None:
    row = dict(ROW)
    del row["generation"]
    with pytest.raises(ProtocolError, match=r"^reply to 'list': field 'tags\[0\]\.generation': missing$"):
        protocol.LIST.reply_from({"tags": [row]})
    with pytest.raises(ProtocolError, match=r"^reply to 'generation': field 'segment': missing$"):
        protocol.GENERATION.reply_from({})
    with pytest.raises(ProtocolError, match=r"^reply to 'stats': field '\(the result\)': expected an object"):
        protocol.STATS.reply_from([1, 2])
    # A field with a default may be missing (an older daemon); unknown keys are ignored.
    assert protocol.LOOKUP.reply_from({"segment": None, "new": 1}) == replies.Lookup(None, None)


def test_an_error_reply_with_a_malformed_envelope_is_a_protocol_error() -> None:
    for data in (b"[1]", b"{", b'{"v": 1, "id": 1}', b'{"v": 99, "id": 1, "ok": true, "result": {}}'):
        with pytest.raises(ProtocolError):
            protocol.decode_reply(data)


def test_the_op_table_is_the_daemons_dispatch_table() -> None:
    handlers = {name[3:] for name, _ in inspect.getmembers(Handlers, inspect.isfunction) if name.startswith("op_")}
    assert handlers == set(protocol.OPS), "every op needs an op_<name> handler, and every handler an op"
    for name, op in protocol.OPS.items():
        assert op.name == name
        ret = inspect.signature(getattr(Handlers, "op_" + name)).return_annotation
        assert ret == op.reply.__name__, (name, ret)  # (annotations are strings here)


def test_every_reply_goes_through_the_wire_unchanged(daemon: Daemon) -> None:
    conn = ndsharray.transport.connection(daemon.endpoint)
    with ndsharray.NdShArray("cam", np.zeros((2, 3), np.uint8), "w") as w, \
            ndsharray.NdShArray("cam", r_w="r") as r:
        r.read()
        answers = [conn.request(protocol.PING), conn.request(protocol.STATS),
                   conn.request(protocol.LIST), conn.request(protocol.LOOKUP, tag="cam")]
        assert w is not None
    for got in answers:
        assert type(got).from_wire(json.loads(json.dumps(got.to_wire())), "x") == got
    ping, stats, listed, lookup = answers
    assert isinstance(ping, replies.Ping) and ping.protocol == protocol.PROTOCOL
    assert isinstance(stats, replies.Stats) and stats.tags == 1
    assert isinstance(lookup, replies.Lookup) and lookup.segment is not None
    assert lookup.segment.shape == (2, 3) and lookup.removed is None


# The keys `ls --json` and `info --json` printed before the rows were typed once: scripts,
# the web view and the bridge read them.
OLD_KEYS = {
    "tag", "dtype", "shape", "nbytes", "writer_pid", "last_writer_pid", "readers", "reader_pids",
    "writes", "last_write_age_s", "generation", "segment", "slots", "size", "rate_hz",
    "max_read_latency_s", "max_behind", "reader_stats", "writer_left",
}


def test_ls_and_info_json_keep_every_key_and_add_the_exact_dtype(daemon: Daemon) -> None:
    dt = np.dtype([("x", "<f4"), ("n", "<u2")])
    with ndsharray.NdShArray("rec", np.zeros(3, dt), "w"):
        (row,) = json.loads(CliRunner().invoke(main, ["ls", "--json"]).output)
        one = json.loads(CliRunner().invoke(main, ["info", "rec", "--json"]).output)
        (info,) = ndsharray.list_tags()
    assert set(row) >= OLD_KEYS and set(row) == set(one) == {f.name for f in dataclasses.fields(info)}
    assert row["descr"] == one["descr"] == info.descr == dtype_to_text(dt)
    for live in (row, one):  # (the age moves between the calls)
        assert {k: v for k, v in live.items() if k != "last_write_age_s"} == \
            {k: v for k, v in info.as_json().items() if k != "last_write_age_s"}
