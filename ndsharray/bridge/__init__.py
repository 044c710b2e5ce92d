"""``ndsharray bridge``: tags across hosts over Eclipse Zenoh (``pip install 'ndsharray[bridge]'``).

Importing this package needs no Zenoh; starting a :class:`Bridge` does.
"""

from .codecs import Codec, CodecError
from .core import Bridge
from .patterns import TagPattern

__all__ = ["Bridge", "Codec", "CodecError", "TagPattern"]
