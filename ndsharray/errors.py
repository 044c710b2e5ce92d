"""Exceptions raised by ndsharray, named by cause; and the daemon's error codes.

::

    NdShArrayError                  root of everything ndsharray raises on purpose (never
    │                               raised itself: every raise names its cause below)
    ├── UsageError                  your mistake, not a fault (also a ValueError): a bad
    │   │                           argument, a handle used as its r_w or state forbids
    │   │                           (write() on a reader, inside a loan() block, a writer
    │   │                           inherited by fork), client and daemon configured apart
    │   └── HandleClosedError       you closed this handle and then used it
    ├── DaemonUnavailableError      no daemon answers at the endpoint (and none could be started)
    ├── ProtocolError               the daemon and this client do not understand each other
    │                               (a malformed reply, or the daemon's BAD_VERSION/UNKNOWN_OP)
    ├── ResourceLimitError          a limit was reached: /dev/shm full, a daemon quota, the
    │   │                           reader rows of a segment
    │   └── DaemonLimitError        ... said by the daemon (NO_SPACE, LIMIT; also a DaemonError)
    ├── DaemonError                 the daemon refused a request (``code``: an ErrorCode)
    │   ├── TagBusyError            someone else is the live writer of this tag (TAG_BUSY)
    │   ├── TagNotFoundError        no such tag (NOT_FOUND)
    │   ├── DaemonLimitError        (above)
    │   └── TagRemovedError         this writer's tag was removed (ndsharray rm) or taken
    │                               over (NOT_WRITER)
    ├── SegmentGoneError            the segment was removed under us (the tag was re-created)
    ├── CorruptSegmentError         a segment header fails validation; nothing was mapped as data
    ├── WriterStalledError          readers pinned every slot for longer than the write timeout
    ├── UnsupportedDtypeError       the dtype cannot live in shared memory (also a TypeError,
    │                               and a NotImplementedError as ndsharray 1.x raised)
    ├── CodecError                  the bridge: an array its codec cannot carry, or a payload
    │                               it cannot decode (also a ValueError)
    └── UnsafeFileError             a file beside the socket or in /dev/shm is a link, not a
                                    regular file, or not ours (also a PermissionError)

Plain argument *type* mistakes stay ``TypeError``. Each daemon error code raises one class:
see :func:`from_reply`.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """The codes of the daemon's error replies (a ``str``: ``code == "TAG_BUSY"`` holds)."""

    BAD_REQUEST = "BAD_REQUEST"  # malformed message or field
    BAD_VERSION = "BAD_VERSION"  # protocol version mismatch
    UNKNOWN_OP = "UNKNOWN_OP"
    TAG_BUSY = "TAG_BUSY"  # another live writer holds the tag
    NOT_FOUND = "NOT_FOUND"  # no such tag
    NOT_WRITER = "NOT_WRITER"  # the caller is not the tag's writer
    NO_SPACE = "NO_SPACE"  # /dev/shm full or a byte quota reached
    LIMIT = "LIMIT"  # a configured limit (tags, clients) reached
    FORBIDDEN = "FORBIDDEN"  # another user's tag (--group: members remove only their own)
    INTERNAL = "INTERNAL"  # a daemon bug; the daemon keeps serving

    def __str__(self) -> str:  # (what a str printed before it became an enum: the code)
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class NdShArrayError(Exception):
    """Root of every exception ndsharray raises on purpose."""


class UsageError(NdShArrayError, ValueError):
    """The caller's mistake: a bad argument value, or a handle used in a way its ``r_w`` or
    state does not allow. A ``ValueError`` too; the message says what to do instead."""


class DaemonUnavailableError(NdShArrayError):
    """No ndsharrayd answers at the endpoint, and none could be started.

    ``absent``: True when no daemon held the endpoint (none ran, or the one asked went away
    before it answered): a restart may be under way, and a blocking read waits for one.
    False when one runs but did not answer, or cannot be used (another user's, another pid
    namespace's)."""

    def __init__(self, message: str, absent: bool = False) -> None:
        super().__init__(message)
        self.absent = absent


class ProtocolError(NdShArrayError):
    """A message could not be understood (malformed, wrong version, wrong types).

    ``code``: the daemon's ``BAD_VERSION`` or ``UNKNOWN_OP`` when it said so; None when this
    client found the daemon's reply malformed."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, ErrorCode | None]]:
        return type(self), (self.message, self.code)


class DaemonError(NdShArrayError):
    """The daemon answered a request with an error; ``code`` is its :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def __reduce__(self) -> tuple[type[DaemonError], tuple[ErrorCode, str]]:
        # (an exception pickles its args, here the message alone: a pool worker's error
        # would not rebuild in the parent)
        return type(self), (self.code, self.message)


class TagBusyError(DaemonError):
    """Another live process (or handle) is the writer of this tag."""


class TagNotFoundError(DaemonError):
    """The daemon has no tag of that name."""


class ResourceLimitError(NdShArrayError):
    """Shared memory is full, a daemon limit (bytes, tags, handles) or a segment's reader
    rows are used up."""


class DaemonLimitError(DaemonError, ResourceLimitError):
    """The daemon refused for a limit: ``NO_SPACE`` (/dev/shm or --max-bytes) or ``LIMIT``
    (--max-tags, --max-clients)."""


class SegmentGoneError(NdShArrayError):
    """The shared-memory segment a handle expected has been removed."""


class TagRemovedError(DaemonError):
    """The tag this writer wrote was removed (``ndsharray rm``) or taken over; open a new
    writer."""

    def __init__(self, code: ErrorCode = ErrorCode.NOT_WRITER, message: str = "") -> None:
        super().__init__(code, message)


class CorruptSegmentError(NdShArrayError):
    """A segment's header is inconsistent; the segment was not used."""


class WriterStalledError(NdShArrayError):
    """Every slot stayed pinned by readers for longer than the write timeout."""


class HandleClosedError(UsageError):
    """The handle was closed by its owner and cannot be used any more."""


class UnsupportedDtypeError(NdShArrayError, TypeError, NotImplementedError):
    """The dtype holds Python objects or has no fixed size, so it cannot be shared.

    A ``TypeError``; also a ``NotImplementedError``, which ndsharray 1.x raised for it.
    """


class CodecError(NdShArrayError, ValueError):
    """The bridge: an array this codec cannot carry, or a payload it cannot decode."""


class UnsafeFileError(NdShArrayError, PermissionError):
    """A file ndsharray was about to use (lock, log, segment) is a link, not a regular
    file, or belongs to someone it does not trust: another user may have planted it."""


# Each code of an error reply raises one class (the client's only mapping).
_BY_CODE: dict[ErrorCode, type[DaemonError]] = {
    ErrorCode.TAG_BUSY: TagBusyError,
    ErrorCode.NOT_FOUND: TagNotFoundError,
    ErrorCode.NOT_WRITER: TagRemovedError,
    ErrorCode.NO_SPACE: DaemonLimitError,
    ErrorCode.LIMIT: DaemonLimitError,
}
_NOT_UNDERSTOOD = (ErrorCode.BAD_VERSION, ErrorCode.UNKNOWN_OP)


def from_reply(code: str, message: str) -> NdShArrayError:
    """The exception an error reply with ``code`` raises: :class:`ProtocolError` for a code
    this client does not know, or for BAD_VERSION and UNKNOWN_OP; else the code's class
    (:class:`DaemonError` itself for BAD_REQUEST, FORBIDDEN and INTERNAL)."""
    try:
        known = ErrorCode(code)
    except ValueError:
        return ProtocolError(f"the daemon answered with error code {code!r:.40}, which this "
                             f"client does not know ({message}) - upgrade the older of the two")
    if known in _NOT_UNDERSTOOD:
        return ProtocolError(message, known)
    return _BY_CODE.get(known, DaemonError)(known, message)
