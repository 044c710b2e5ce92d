"""Each tag's write rate, for ``ls``: the write count in its segment header, sampled once a
sweep (about a second) and compared with the sample before."""

from __future__ import annotations

from ndsharray.segment.status import latest_write

from .broken import BrokenTags
from .registry import Registry
from .segment_files import SegmentFiles


class WriteRates:
    """Writes per second per tag over the last sweep interval."""

    def __init__(self, registry: Registry, files: SegmentFiles, broken: BrokenTags) -> None:
        self._registry = registry
        self._files = files
        self._broken = broken
        self._samples: dict[str, tuple[int, float, str]] = {}  # tag -> (writes, time, segment)
        self._rates: dict[str, float] = {}

    def get(self, tag: str) -> float | None:
        return self._rates.get(tag)

    def sample(self, now: float) -> None:
        """Write rate per tag over the last sweep interval, read from segment headers."""
        for tag, rec in list(self._registry.tags.items()):
            if rec.segment is None:
                continue
            got = self._files.look(rec.segment, rows=False)
            if isinstance(got, str):
                self._broken.drop(rec, got)
                continue
            count = latest_write(got[0], got[1].nslots)[0] if got else 0
            prev = self._samples.get(tag)
            if prev is not None and prev[2] == rec.segment and now > prev[1]:
                self._rates[tag] = (count - prev[0]) / (now - prev[1])
            self._samples[tag] = (count, now, rec.segment)
        for tag in list(self._samples.keys() - self._registry.tags.keys()):
            del self._samples[tag]
            self._rates.pop(tag, None)
