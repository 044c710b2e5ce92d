"""What the daemon knows, as typed objects: the library side of ``ndsharray ls``."""

from __future__ import annotations

from . import config, daemonctl, transport
from .errors import DaemonUnavailableError, ErrorCode, TagNotFoundError
from .protocol import LIST, REMOVE, STATS
from .replies import Removed, Stats
from .replies import TagInfo as TagInfo  # (the ls row: defined once, with the replies)


def list_tags(endpoint: str | None = None) -> list[TagInfo]:
    """Every tag the daemon at ``endpoint`` holds, sorted by tag; none when no daemon runs
    (looking never starts one)."""
    return list_tags_and_notes(endpoint)[0]


def list_tags_and_notes(endpoint: str | None = None) -> tuple[list[TagInfo], list[str]]:
    """:func:`list_tags`, and the daemon's notes on tags it removed by itself lately (a
    segment some process shrank: the daemon removes such a tag rather than crash)."""
    ep = config.resolve_endpoint(endpoint)
    try:
        res = transport.connection(ep).request(LIST, autostart=False)
    except DaemonUnavailableError:
        if daemonctl.daemon_running(ep):
            raise  # one runs but does not answer: say so
        return [], []
    # Why an importing bridge closed a tag's writer (its reasons file): here, in the one
    # place every listing comes from, so that ls, info, the web API and the library agree.
    from .bridge.endings import annotate  # (not at import: the bridge package imports the client)

    return annotate(ep, res.tags), list(res.broken)


def daemon_stats(endpoint: str | None = None) -> Stats:
    """The daemon's counters: requests served, tags, bytes in use, uptime."""
    return transport.connection(endpoint).request(STATS)


def daemon_pid(endpoint: str | None = None) -> int | None:
    """Pid of the daemon serving ``endpoint``, or None when none runs (no daemon call).

    Only a pid that really holds the endpoint's lock: the file's content alone is anybody's
    word (whoever can write the folder can replace it). A daemon in another pid namespace
    raises :class:`DaemonUnavailableError` (its pid means nothing here)."""
    return daemonctl.daemon_pid(config.resolve_endpoint(endpoint))


def daemon_running(endpoint: str | None = None) -> bool:
    """True when a daemon holds the endpoint's lock (no daemon call; it may be starting)."""
    return daemonctl.daemon_running(config.resolve_endpoint(endpoint))


def start_daemon(endpoint: str | None = None) -> int | None:
    """Start a detached daemon for ``endpoint`` unless one runs (safe to race); returns the
    pid of the one that serves it. (Clients also start one by themselves when they need
    it, unless NDSHARRAY_AUTOSTART=0.)"""
    ep = config.resolve_endpoint(endpoint)
    daemonctl.start_daemon(ep)
    return daemon_pid(ep)


def stop_daemon(endpoint: str | None = None, timeout: float = 10.0) -> int | None:
    """SIGTERM the endpoint's daemon and wait until it has removed its segments and socket.

    Returns the stopped daemon's pid, or None if none was running. Clients keep working on
    what they have mapped. Only a process verified to be that daemon is signalled (see
    :func:`ndsharray.daemonctl.stop_daemon`).
    """
    ep = config.resolve_endpoint(endpoint)
    pid = daemonctl.stop_daemon(ep, timeout)
    if pid is not None:
        transport.connection(ep).close()
    return pid


def tag_info(tag: str, endpoint: str | None = None) -> TagInfo:
    """One tag's :class:`TagInfo`; raises :class:`TagNotFoundError` if there is none."""
    for t in list_tags(endpoint):
        if t.tag == tag:
            return t
    raise TagNotFoundError(ErrorCode.NOT_FOUND,
                           f"no tag {tag!r} at {config.resolve_endpoint(endpoint)} (see ndsharray ls)")


def remove_tag(tag: str, endpoint: str | None = None) -> Removed:
    """Remove ``tag``: its segment is unlinked, its writer's next write raises
    :class:`TagRemovedError`, its readers keep the arrays they hold."""
    return transport.connection(endpoint).request(REMOVE, tag=tag, autostart=False)
