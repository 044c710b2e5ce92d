"""``ndsharray bridge``: tags across hosts over Eclipse Zenoh (``pip install 'ndsharray[bridge]'``).

Importing this package needs no Zenoh.
"""

from .codecs import Codec, CodecError
from .patterns import TagPattern

__all__ = ["Codec", "CodecError", "TagPattern"]
