"""Exceptions raised by ndsharray, named by cause.

::

    NdShArrayError                  root of everything ndsharray raises on purpose
    ├── UsageError                  your mistake, not a fault (also a ValueError): a bad
    │   │                           argument or file given
    │   └── HandleClosedError       you closed this handle and then used it
    ├── DaemonUnavailableError      no daemon answers at the endpoint (and none could be started)
    ├── ProtocolError               the daemon and this client do not understand each other
    ├── DaemonError                 the daemon refused a request (carries the error code)
    │   ├── TagBusyError            someone else is the live writer of this tag
    │   ├── TagNotFoundError        no such tag
    │   ├── ResourceLimitError      /dev/shm is full or a daemon limit was reached
    │   └── TagRemovedError         this writer's tag was removed (ndsharray rm) or taken over
    ├── SegmentGoneError            the segment was removed under us (the tag was re-created)
    ├── CorruptSegmentError         a segment header fails validation; nothing was mapped as data
    ├── WriterStalledError          readers pinned every slot for longer than the write timeout
    ├── UnsupportedDtypeError       the dtype cannot live in shared memory (also a TypeError,
    │                               and a NotImplementedError as ndsharray 1.x raised)
    ├── CodecError                  the bridge: an array its codec cannot carry, or a payload
    │                               it cannot decode (also a ValueError)
    └── UnsafeFileError             a file beside the socket or in /dev/shm is a link, not a
                                    regular file, or not ours (also a PermissionError)

Plain argument *type* mistakes stay ``TypeError``.
"""

from __future__ import annotations


class NdShArrayError(Exception):
    """Root of every exception ndsharray raises on purpose."""


class UsageError(NdShArrayError, ValueError):
    """The caller's mistake: a bad argument value, or a handle used in a way its ``r_w`` or
    state does not allow. A ``ValueError`` too; the message says what to do instead."""


class DaemonUnavailableError(NdShArrayError):
    """No ndsharrayd answers at the endpoint, and none could be started."""


class ProtocolError(NdShArrayError):
    """A message could not be understood (malformed, wrong version, wrong types)."""


class DaemonError(NdShArrayError):
    """The daemon answered a request with an error.

    ``code`` is one of :class:`ndsharray.protocol.ErrorCode`'s values.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TagBusyError(DaemonError):
    """Another live process (or handle) is the writer of this tag."""


class TagNotFoundError(DaemonError):
    """The daemon has no tag of that name."""


class ResourceLimitError(DaemonError):
    """Shared memory is full, or a daemon limit (bytes, tags) was reached."""


class SegmentGoneError(NdShArrayError):
    """The shared-memory segment a handle expected has been removed."""


class TagRemovedError(DaemonError):
    """The tag this writer wrote was removed (``ndsharray rm``) or taken over; open a new
    writer."""

    def __init__(self, code: str = "NOT_WRITER", message: str = "") -> None:
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
