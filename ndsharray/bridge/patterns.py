"""Tag globs for ``--export`` and ``--import``: ``*`` is one tag part, ``**`` any number of
parts (none included). Pure: no Zenoh, no daemon."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..protocol import check_tag


@dataclass(frozen=True)
class TagPattern:
    """A compiled glob; ``match(tag)`` says whether ``tag`` is one of its tags."""

    text: str
    _parts: tuple[str, ...] = field(repr=False, compare=False, default=())

    @classmethod
    def parse(cls, text: str) -> TagPattern:
        if not isinstance(text, str) or not text:
            raise UsageError("a tag pattern must be a non-empty string such as 'camera/*' or 'camera/**'")
        parts = tuple(text.split("/"))
        for p in parts:
            if p in ("*", "**"):
                continue
            if "*" in p:
                raise UsageError(
                    f"tag pattern {text!r}: '*' must be a whole part ('camera/*', 'camera/**'), not {p!r}")
            try:
                check_tag(p)  # a part alone is a valid tag exactly when it is a valid part
            except ValueError:
                raise UsageError(
                    f"tag pattern {text!r}: part {p!r} is not a tag part (letters, digits, '_.-:@+=', "
                    "no empty part between '/')") from None
        return cls(text, parts)

    def match(self, tag: str) -> bool:
        return _match(self._parts, tuple(tag.split("/")))

    @property
    def literal_prefix(self) -> tuple[str, ...]:
        """The parts before the first wildcard (every matching tag starts with them)."""
        out = []
        for p in self._parts:
            if p in ("*", "**"):
                break
            out.append(p)
        return tuple(out)


def _match(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not pat:
        return not parts
    head = pat[0]
    if head == "**":
        rest = pat[1:]
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1))
    if not parts:
        return False
    if head == "*" or head == parts[0]:
        return _match(pat[1:], parts[1:])
    return False


def matches_any(patterns: list[TagPattern] | tuple[TagPattern, ...], tag: str) -> bool:
    return any(p.match(tag) for p in patterns)
