"""The public handle: ``NdShArray(tag, array=None, r_w=...)`` shares one numpy array by tag.

A facade over the two roles, each in a module of its own:

- :mod:`ndsharray.handle`: ``NdShArray`` itself (what both roles share, and which one the
  constructor returns);
- :mod:`ndsharray.writer`: ``Writer``, the tag's one writer (``r_w='w'``);
- :mod:`ndsharray.reader`: ``Reader``, a reader of it (``r_w='r'``).

A writer copies each array into a free slot of the tag's segment; a reader gets a
read-only, zero-copy view of the latest complete write. Both talk to the daemon only to
open, close or change shape/dtype/slot count: a same-shape write or read never does.
"""

from __future__ import annotations

from .handle import NdShArray, close_all
from .reader import Reader
from .reader import _reader_from_pickle as _reader_from_pickle  # (what older pickles name)
from .writer import Writer

__all__ = ["NdShArray", "Reader", "Writer", "close_all"]
