"""ndsharray: share numpy arrays between processes by tag, through shared memory.

Writer::

    w = ndsharray.NdShArray("camera/left", frame, r_w="w")
    w.write(next_frame)

Reader (any other process)::

    status, frame = ndsharray.NdShArray("camera/left", r_w="r").read()
"""

from ._version import __version__
from .admin import TagInfo, daemon_stats, list_tags, remove_tag, tag_info
from .client import NdShArray, close_all
from .dtypes import shareable, supported_types
from .errors import (
    CorruptSegmentError,
    DaemonError,
    DaemonLimitError,
    DaemonUnavailableError,
    HandleClosedError,
    NdShArrayError,
    ProtocolError,
    ResourceLimitError,
    SegmentGoneError,
    TagBusyError,
    TagNotFoundError,
    TagRemovedError,
    UnsafeFileError,
    UnsupportedDtypeError,
    UsageError,
    WriterStalledError,
)

__all__ = [
    "CorruptSegmentError", "DaemonError", "DaemonLimitError", "DaemonUnavailableError", "HandleClosedError",
    "NdShArray", "NdShArrayError", "ProtocolError", "ResourceLimitError", "SegmentGoneError",
    "TagBusyError", "TagInfo", "TagNotFoundError", "TagRemovedError", "UnsafeFileError",
    "UnsupportedDtypeError", "UsageError",
    "WriterStalledError", "__version__",
    "close_all", "daemon_stats", "list_tags", "remove_tag", "shareable", "supported_types", "tag_info",
]
