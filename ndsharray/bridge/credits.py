"""An import stream's credit account: the credits it sent, the frames it owes credits for,
and the window the exporter may hold (importer.py does the I/O, under its stream's lock).

An importer gives each exporter a window of credits (frames it may send) and one more for
each frame that arrives: wire.window() says how many, and how many go back in one
message, by the frames' size. The exporter keeps at most wire.WINDOW credits
(sender.Stream.credits); every credit more than the window leaves a frame more in flight
(adding its transfer time to the age of the newest one delivered), every credit fewer
leaves the stream limping, or stalled.
"""

from __future__ import annotations

from . import wire

REMEMBERED = 64  # credits whose send time is kept: one older answers a frame that is stale by now


class CreditLedger:
    """The credits of one import stream (no I/O, no lock: its stream's lock guards it)."""

    def __init__(self) -> None:
        self.credits: dict[int, int] = {}  # credit id -> when it was sent (monotonic ns)
        self.last = 0  # the id of the last credit sent
        self.owed = 0  # frames arrived whose credit has not been given back yet
        # The credit that granted the whole window anew (on_token, a refresh) replaced every
        # one before, which the exporter may still hold (a source idle for REFRESH) or have
        # answered with frames stuck on the link (a stall). A frame answering one of those
        # (``replaced``) gives no credit back; a stale one still asks for the newest, so the
        # next frame's credit is kept (``withheld``: at most WINDOW - window, the most the
        # exporter keeps beyond the window; more would leave it short once it drops some).
        self.renewed = 0
        self.replaced = False
        self.withheld = 0
        # Frames the exporter may have in flight, credits owed included: wire.window() of the
        # last frame's size; the narrow one until a frame says (a big frame must not wait
        # behind a wide window it was never meant to have).
        self.window = wire.BIG_WINDOW

    def grant(self, now: int, count: int, renew: bool = False, withhold: bool = False) -> tuple[int, int]:
        """A new credit, sent at ``now``, for ``count`` frames and those owed: (its id, the
        frames it grants). ``renew``: the whole window anew; ``withhold``: a replaced
        credit's (see renewed)."""
        if renew:
            self.owed = self.withheld = 0
        elif withhold and self.withheld < wire.WINDOW - self.window:
            self.withheld += 1
        self.last += 1
        if renew:
            self.renewed = self.last
        self.credits[self.last] = now
        if len(self.credits) > REMEMBERED:
            del self.credits[min(self.credits)]
        count, self.owed = min(wire.WINDOW, count + self.owed), 0
        return self.last, count

    def answer(self, credit: int) -> int | None:
        """A frame answering ``credit`` is being taken: when that credit was sent (None: too
        long ago to be remembered); notes whether a renewal replaced it (see renewed)."""
        self.replaced = credit < self.renewed
        return self.credits.get(credit)

    def owe(self) -> None:
        """The credit of the frame being taken is owed back, unless it is kept (see renewed)."""
        if not self.replaced and self.withheld:
            self.withheld -= 1
        elif not self.replaced:
            self.owed += 1

    def give_back(self, nbytes: int) -> bool:
        """A frame of ``nbytes`` was taken: True if the credits owed are due now (grant()),
        False if they wait for the next frames' (wire.window()); the exporter still holds
        the rest of the window meanwhile."""
        self.owe()
        window, batch = wire.window(nbytes)
        if window < self.window:  # narrower: credits owed are kept until it is
            kept = min(self.owed, self.window - window)
            self.owed, self.window = self.owed - kept, self.window - kept
        elif window > self.window:  # wider: the extra credits go with this one's
            self.owed, self.window = self.owed + window - self.window, window
        return self.owed >= batch
