"""ndsharrayd: the per-user registry daemon of ndsharray (see ``python -m ndsharrayd --help``)."""
