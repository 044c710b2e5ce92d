"""Which local user is at the other end of a loopback TCP connection (Linux ``/proc``).

Without a token, ``ndsharray serve`` answers the loopback only; but every local user can
reach 127.0.0.1, while the daemon's socket and the segments are the user's alone (0700,
0600). So a request without a token is served only when the connecting socket belongs to
this user (or root). TCP carries no peer credentials, but the kernel lists every socket
with its owner in ``/proc/net/tcp`` and ``tcp6``: the client's socket is the one whose
local address is the request's client address and whose remote address is ours.
"""

from __future__ import annotations

import ipaddress
import os
import struct

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _proc_address(host: str, port: int) -> str:
    """``host:port`` as ``/proc/net/tcp*`` writes it: each 32-bit word of the address in
    host byte order, in hex, then the port."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    packed = ip.packed
    words = [packed] if ip.version == 4 else [packed[i:i + 4] for i in range(0, 16, 4)]
    text = "".join("%08X" % struct.unpack("=I", w)[0] for w in words)
    return f"{text}:{port:04X}"


def _candidates(host: str, port: int) -> set[str]:
    """The forms a socket's address can take (an IPv4 peer of an IPv6 socket is mapped)."""
    out = {_proc_address(host, port)}
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.version == 4:
        out.add(_proc_address(f"::ffff:{host}", port))
    elif ip.ipv4_mapped is not None:
        out.add(_proc_address(str(ip.ipv4_mapped), port))
    return out


def peer_uid(client: tuple[str, int] | None, server: tuple[str, int] | None) -> int | None:
    """The uid owning the socket at ``client`` connected to ``server`` (an ASGI scope's
    ``client`` and ``server``), or None when no such socket is found."""
    if client is None or server is None:
        return None
    try:
        local = _candidates(client[0], int(client[1]))
        remote = _candidates(server[0], int(server[1]))
    except (ValueError, TypeError, OSError):
        return None
    for table in _TABLES:
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)  # the column names
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] in local and fields[2] in remote:
                        return int(fields[7])
        except OSError:
            continue
    return None


def same_user(client: tuple[str, int] | None, server: tuple[str, int] | None) -> bool:
    """True when the peer's socket belongs to this process's user or to root."""
    owner = peer_uid(client, server)
    return owner is not None and owner in (os.geteuid(), 0)

