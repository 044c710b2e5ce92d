"""The ``ndsharray`` command's subcommands, one module per topic; :mod:`ndsharray.cli`
gathers them under its group (the endpoint on ``ctx.obj``, library errors turned into exit
codes in one place).

- ``tags``: ``ls``, ``info``, ``rm``: what the daemon knows of the tags.
- ``frames``: ``show``, ``record``, ``replay``: a tag's frames.
- ``daemon``: ``daemon status|start|stop`` and ``doctor``.
- ``params``: argument types shared by them; ``formats``: how figures are printed.
"""
