"""Exceptions raised by ndsharray, named by cause.

::

    NdShArrayError                  root of everything ndsharray raises on purpose
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
    ├── HandleClosedError           you closed this handle and then used it (also a ValueError)
    ├── UnsupportedDtypeError       the dtype cannot live in shared memory (also a TypeError,
    │                               and a NotImplementedError as ndsharray 1.x raised)
    └── UnsafeFileError             a file beside the socket or in /dev/shm is a link, not a
                                    regular file, or not ours (also a PermissionError)

Plain argument mistakes stay ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations


class NdShArrayError(Exception):
    """Root of every exception ndsharray raises on purpose."""


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


class HandleClosedError(NdShArrayError, ValueError):
    """The handle was closed by its owner and cannot be used any more."""


class UnsupportedDtypeError(NdShArrayError, TypeError, NotImplementedError):
    """The dtype holds Python objects or has no fixed size, so it cannot be shared.

    A ``TypeError``; also a ``NotImplementedError``, which ndsharray 1.x raised for it.
    """


class UnsafeFileError(NdShArrayError, PermissionError):
    """A file ndsharray was about to use (lock, log, segment) is a link, not a regular
    file, or belongs to someone it does not trust: another user may have planted it."""
