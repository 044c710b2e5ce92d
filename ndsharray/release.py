"""How a writer's tag goes back to the daemon, whichever way the writer ends.

``close()`` stops the segment's C writer first: writes still copying in other threads then
publish nothing, and close() waits up to ``writer.CLOSE_DRAIN`` for them. A successor
writer that took the segment over while one of them still copied could pick the slot
being filled, so the tag goes back only when no write is in flight any more: by close()
itself, or, when it stopped waiting (or was interrupted), by the last of those writes as
it ends. ``fast.hand_over()`` (one C call) says who is last. Every way a write can end
without publishing comes through here: a failed copy or loan block, an interrupt between
an acquire and its publish, a close() that overtook it.
"""

from __future__ import annotations

import contextlib
from typing import Any, NoReturn

from .errors import HandleClosedError
from .segment.writer import SegmentWriter, abandon
from .transport import Connection


class TagRelease:
    """The release of ``tag`` (registered with ``token``) through ``conn``."""

    def __init__(self, conn: Connection, tag: str, token: str) -> None:
        self._conn = conn
        self._tag = tag
        self._token = token

    def send(self, in_gc: bool) -> None:
        """Release the tag now (close(): no write is in flight any more)."""
        if in_gc:
            # The collector may run inside a daemon request of this very thread: never do
            # blocking IPC here; the registrar thread sends it.
            self.post()
            return
        # Never waits for a daemon that is down or restarting (a stopped one has nothing to
        # release, a restarting one gets it before this process's next request); never
        # fails (the daemon notices our death anyway).
        self._conn.send_or_post("release", tag=self._tag, token=self._token)

    def post(self) -> None:
        """Release the tag soon (the registrar thread sends it); a second one is a no-op."""
        self._conn.post("release", tag=self._tag, token=self._token)

    def if_last(self, fast: Any) -> None:
        """After a write of a closed handle gave its slot back: if close() stopped waiting
        for writes in flight and this was the last, the tag goes back now."""
        if fast.hand_over(False):
            self.post()

    def abandon(self, mark: int) -> None:
        """Give back, unpublished, the slots this thread acquired for this handle since
        ``mark`` and still holds: a copy or loan block failed, or an exception came between
        an acquire and the code that would publish or give back its slot (review item 4: a
        KeyboardInterrupt can land wherever Python code runs, and the slot index it carried
        is then lost, while the C writer still has the slot busy: no write would use it,
        and close() would wait for it and never hand the tag back)."""
        for fast in abandon(mark, self._token):
            self.if_last(fast)

    def give_back(self, seg: SegmentWriter, i: int) -> None:
        """Give lent slot ``i`` back unpublished, from whichever thread ends the loan."""
        with contextlib.suppress(ValueError):  # (not busy: nothing to give back)
            seg.fast.release(i)
        self.if_last(seg.fast)

    def overtaken(self, fast: Any) -> NoReturn:
        """close() in another thread overtook this write (its copy ran without the GIL, or
        its loan() block was open): the slot went back unpublished, so that no successor
        writer finds a second writer's frame in it."""
        self.if_last(fast)
        raise HandleClosedError(
            f"NdShArray {self._tag!r} was closed by another thread while this write copied; "
            "nothing was published")
