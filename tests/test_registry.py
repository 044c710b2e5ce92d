"""The daemon's registry, a pure state machine: claims, takeovers, expiry, dead pids, and
its invariants under any sequence of operations.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndsharray.protocol import ErrorCode, RequestError
from ndsharrayd.registry import Registry


def test_registry_claim_busy_and_takeover() -> None:
    reg = Registry(orphan_ttl=10)
    reg.claim("t", 100, "a" * 16, alive=lambda pid: True)
    with pytest.raises(RequestError) as info:
        reg.claim("t", 200, "b" * 16, alive=lambda pid: True)
    assert info.value.code == ErrorCode.TAG_BUSY and "pid 100" in info.value.message
    rec = reg.claim("t", 200, "b" * 16, alive=lambda pid: False)  # holder is dead
    assert rec.writer is not None and rec.writer.pid == 200


def test_registry_idle_expiry_and_dead_pids() -> None:
    reg = Registry(orphan_ttl=10)
    reg.claim("t", 100, "a" * 16, alive=lambda pid: True)
    assert reg.commit_generation("t", "a" * 16, segment="s1", dtype="'<f8'", shape=(2,),
                                 nbytes=16, slots=3, size=8192) is None
    assert reg.commit_generation("t", "a" * 16, segment="s2", dtype="'<f8'", shape=(3,),
                                 nbytes=24, slots=3, size=8192) == "s1"
    reg.attach("t", 300, "c" * 16)
    reg.attach("waiting", 300, "d" * 16)  # a reader before any writer
    assert reg.drop_pid(100, now=0.0) == ["t"]
    assert reg.expire(now=100.0) == []  # a reader remains
    assert sorted(reg.drop_pid(300, now=1.0)) == ["t", "waiting"]
    assert reg.expire(now=5.0) == [] and "waiting" not in reg.tags  # no segment: gone at once
    assert reg.expire(now=11.0) == ["s2"] and not reg.tags


OPS = st.lists(st.tuples(st.sampled_from(["claim", "release", "attach", "detach", "commit", "drop", "expire"]),
                         st.sampled_from(["t1", "t2"]), st.integers(1, 4), st.sampled_from(["a", "b", "c"]),
                         st.floats(0, 100)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_registry_invariants_hold_under_any_sequence(ops: list[tuple[str, str, int, str, float]]) -> None:
    reg = Registry(orphan_ttl=5)
    dead: set[int] = set()
    now = 0.0
    for op, tag, pid, tok, dt in ops:
        now += dt
        token = tok * 16
        if pid in dead and op in ("claim", "attach"):
            continue  # a dead process sends nothing
        try:
            if op == "claim":
                reg.claim(tag, pid, token, alive=lambda p: p not in dead)
            elif op == "release":
                reg.release(tag, token, now)
            elif op == "attach":
                reg.attach(tag, pid, token + "r")
            elif op == "detach":
                reg.detach(tag, token + "r", now)
            elif op == "commit":
                reg.commit_generation(tag, token, segment=f"s{now}", dtype="'<f8'", shape=(1,),
                                      nbytes=8, slots=3, size=4096)
            elif op == "drop":
                dead.add(pid)
                reg.drop_pid(pid, now)
            else:
                reg.expire(now)
        except RequestError as exc:
            assert exc.code in (ErrorCode.TAG_BUSY, ErrorCode.NOT_WRITER)
        for rec in reg.tags.values():
            # An idle record has neither writer nor readers, and a busy one is never idle.
            assert (rec.idle_since is not None) <= (rec.writer is None and not rec.readers)
            assert rec.writer is None or rec.writer.pid not in dead
        assert reg.pids() <= set(range(1, 5)) - dead
