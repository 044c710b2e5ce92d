"""The importer's credit accounting against a model of the exporter (no Zenoh, no daemon):
whatever happens on the link, the exporter ends up with the importer's window of frames
granted, never fewer (a credit leaked: the stream limps, or stalls) nor more (every frame
more in flight adds its transfer time to the age of the newest one delivered)."""

from __future__ import annotations

import collections
import time

from test_bridge_units import _Session, _stream

from ndsharray.bridge import wire
from ndsharray.bridge.credits import CreditLedger
from ndsharray.bridge.importer import ImportStream

BIG = wire.SMALL_FRAME + 1  # bytes on the wire: the narrow window, each credit back at once
SENT = (7, 7000)  # (count, write_ns) of a frame the stream wrote already: taken without a daemon


class _Payload(bytes):
    def to_bytes(self) -> bytes:
        return bytes(self)


class _Exporter:
    """The exporter's side of one stream as sender.Stream keeps it: the credits granted and
    not used yet, at most wire.WINDOW, used oldest first."""

    def __init__(self, stream: ImportStream, session: _Session) -> None:
        self.stream, self.session, self.seen = stream, session, 0
        self.held: collections.deque[int] = collections.deque(maxlen=wire.WINDOW)
        self.take_credits()

    def take_credits(self) -> None:
        for credit, _force, count, _held in self.session.puts[self.seen:]:
            self.held.extend([credit] * count)
        self.seen = len(self.session.puts)

    def send(self, nbytes: int = BIG, count: int = SENT[0]) -> tuple[wire.Frame, _Payload]:
        """A frame against the oldest credit held (delivered later, or never: a stall)."""
        return (wire.Frame(dtype="'|u1'", shape=(nbytes,), count=count, write_ns=SENT[1] if count == SENT[0] else 1,
                           credit=self.held.popleft()), _Payload(bytes(nbytes)))

    def deliver(self, frame: tuple[wire.Frame, _Payload]) -> None:
        self.stream.on_frame(*frame)
        self.take_credits()

    def flow(self, frames: int, nbytes: int = BIG) -> None:
        for _ in range(frames):
            self.deliver(self.send(nbytes))


def _live_stream() -> tuple[ImportStream, _Exporter]:
    stream, session = _stream()
    stream.written = SENT
    assert stream.on_token(True)
    return stream, _Exporter(stream, session)


def _refresh(stream: ImportStream) -> None:
    """Nothing came for REFRESH: tick grants the window again."""
    stream.asked_ns = time.monotonic_ns() - 2 * 10**9
    stream.tick(time.monotonic_ns())


def test_a_refresh_while_the_source_writes_nothing_grants_no_more_than_the_window() -> None:
    # A camera that pauses for more than REFRESH: the exporter still holds the credits
    # (nothing to send), and gets the window again on top of them.
    stream, exporter = _live_stream()
    assert len(exporter.held) == wire.BIG_WINDOW
    _refresh(stream)
    exporter.take_credits()
    exporter.flow(10)
    assert len(exporter.held) == wire.BIG_WINDOW, exporter.held



def test_a_refresh_while_frames_are_stuck_on_the_link_grants_no_more_than_the_window() -> None:
    # A stalled link: the frames sent against the window are stuck; the refresh grants it
    # anew, and the stuck frames arrive (stale: each asks for the newest) once the link is back.
    stream, exporter = _live_stream()
    exporter.flow(5)
    stuck = [exporter.send(count=8 + k) for k in range(wire.BIG_WINDOW)]
    for credit in list(stream.ledger.credits):
        stream.ledger.credits[credit] -= 5 * 10**9  # (asked long ago: the stuck frames are stale)
    _refresh(stream)
    exporter.take_credits()
    stuck += [exporter.send() for _ in range(wire.BIG_WINDOW)]
    for frame in stuck:
        exporter.deliver(frame)
    assert stream.stale == wire.BIG_WINDOW
    exporter.flow(10)
    assert len(exporter.held) == wire.BIG_WINDOW, exporter.held

def test_a_frame_that_could_not_be_written_leaks_no_credit() -> None:
    # A frame that fails (here: a payload that does not fit its header) is asked for again
    # after RETRY; a frame taken meanwhile must not make the stream forget that credit.
    stream, exporter = _live_stream()
    exporter.flow(3)
    head, _ = exporter.send(count=9)
    exporter.deliver((head, _Payload(b"short")))
    assert stream.errors == 1
    exporter.flow(1)
    stream.tick(time.monotonic_ns() + 6 * 10**8)  # (RETRY passed, REFRESH not yet)
    exporter.take_credits()
    exporter.flow(10)
    assert len(exporter.held) == wire.BIG_WINDOW, exporter.held


def test_a_renewal_replaces_every_credit_before_it() -> None:
    # The renewal granted the window anew: a frame answering a credit from before it (held
    # by the exporter through an idle spell, or stuck on the link) gives none back.
    ledger = CreditLedger()
    before, _ = ledger.grant(0, ledger.window, renew=True)
    renewal, count = ledger.grant(1, ledger.window, renew=True)
    assert count == wire.BIG_WINDOW
    assert ledger.answer(before) == 0 and ledger.replaced
    assert not ledger.give_back(BIG) and ledger.owed == 0
    assert ledger.answer(renewal) == 1 and not ledger.replaced
    assert ledger.give_back(BIG) and ledger.grant(2, 0) == (renewal + 1, 1)


def test_stale_replaced_frames_keep_no_more_credits_than_the_exporter_holds_beyond_the_window() -> None:
    # Each stale frame answering a replaced credit asks for the newest (a credit more), so
    # the credit of a later frame is kept instead; at most WINDOW - window of them: the
    # exporter keeps no more than that beyond the window, and would be left short.
    ledger = CreditLedger()
    before, _ = ledger.grant(0, ledger.window, renew=True)
    renewal, _ = ledger.grant(1, ledger.window, renew=True)
    for _ in range(wire.WINDOW):
        ledger.answer(before)
        ledger.grant(2, 1, withhold=ledger.replaced)
    assert ledger.withheld == wire.WINDOW - wire.BIG_WINDOW
    due = []
    for _ in range(3):
        ledger.answer(renewal)
        due.append(ledger.give_back(BIG))
        if due[-1]:
            ledger.grant(3, 0)
    assert due == [False, False, True]


def test_a_retry_after_a_replaced_frame_failed_grants_no_more_than_the_window() -> None:
    # A frame answering a credit a renewal replaced fails to be written: its credit is not
    # owed (the renewal granted the window anew), so the retry's credit is one the
    # importer does not owe, and the next frame's is kept instead.
    stream, exporter = _live_stream()
    exporter.flow(3)
    head, _ = exporter.send(count=9)  # against a credit the refresh below replaces
    _refresh(stream)
    exporter.take_credits()
    exporter.deliver((head, _Payload(b"short")))
    assert stream.errors == 1 and stream.ledger.replaced
    stream.tick(time.monotonic_ns() + 6 * 10**8)  # (RETRY passed, REFRESH not yet)
    exporter.take_credits()
    exporter.flow(10)
    assert len(exporter.held) == wire.BIG_WINDOW, exporter.held
