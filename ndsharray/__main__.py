"""``python -m ndsharray``: the same as the ``ndsharray`` command."""

from .cli import main

main()
