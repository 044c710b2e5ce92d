"""``ndsharray serve``: a live web page of every tag and its frames (the ``web`` extra).

- :mod:`.frames`: what the page shows of one frame (image bytes, statistics, values), pure
  numpy/Pillow work with no I/O.
- :mod:`.hub`: one reader per watched tag, shared by every browser watching it; it encodes
  a frame only when a browser is ready for one (slow browsers get fewer frames, never a
  queue; a tag nobody watches has no reader and costs nothing).
- :mod:`.guard`: who may ask (host, origin, access token).
- :mod:`.app`: the Starlette application (pages, JSON API, streams).
- :mod:`.command`: the ``serve`` CLI command.

Importing this package imports none of the web libraries: ``ndsharray`` works without them.
"""
