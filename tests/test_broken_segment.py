"""A process of the user (or of the group, under --group) shrinks a live tag's segment: the
daemon must neither die of SIGBUS nor keep the broken tag (review defect 2)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import segment
from ndsharray.cli import main


def test_ls_after_a_segment_was_truncated_to_nothing(daemon: Daemon) -> None:
    w = ndsharray.NdShArray("trunc/a", np.arange(1000.0), "w")
    name = w.ndarray_mmap_name
    w.close()  # the tag stays, with its last frame, for --orphan-ttl
    with ndsharray.NdShArray("trunc/ok", np.ones(4), "w"):
        os.truncate(segment.segment_path(name), 0)
        out = CliRunner().invoke(main, ["ls"], catch_exceptions=False)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died:\n" + daemon.read_log()
        assert out.exit_code == 0, out.output
        tags = [line.split()[0] for line in out.output.splitlines()[1:] if not line.startswith("note:")]
        assert tags == ["trunc/ok"]
        assert f"note: tag 'trunc/a' was removed by the daemon because its segment {name} is broken" \
            in out.output
        assert "another process truncated it" in out.output
        assert not os.path.exists(segment.segment_path(name))
        # and it goes on serving
        assert [t.tag for t in ndsharray.list_tags()] == ["trunc/ok"]
    assert "tag 'trunc/a' was removed by the daemon" in daemon.read_log()


def test_writer_and_reader_of_a_shrunk_segment_are_told(daemon: Daemon, caplog: Any) -> None:
    # Keep the header page (so that neither this process's writer nor its reader can fault on
    # the flags they check first) but drop every slot: the daemon notices on its next rate
    # sample (every second), without an ls.
    with ndsharray.NdShArray("trunc/b", np.arange(4096.0), "w") as w, \
            ndsharray.NdShArray("trunc/b", r_w="r") as r:
        assert r.read(copy=True)[0]
        name = w.ndarray_mmap_name
        header = os.stat(segment.segment_path(name)).st_size - 3 * 4096 * 8
        os.truncate(segment.segment_path(name), header)
        wait_until(lambda: not os.path.exists(segment.segment_path(name)), what="the daemon to remove it")
        with pytest.raises(ndsharray.TagRemovedError, match="broke its segment"):
            w.write(np.arange(4096.0))
        with caplog.at_level(logging.WARNING, logger="ndsharray"):
            assert r.read()[0] is False
        assert any("is broken: its file is" in m for m in caplog.messages), caplog.messages
    assert daemon.proc is not None and daemon.proc.poll() is None
