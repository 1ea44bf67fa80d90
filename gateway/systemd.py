"""systemd's notify protocol without a systemd library: one datagram to $NOTIFY_SOCKET.

READY=1 once the store answered and the egress pools were probed once; RELOADING=1 / READY=1 around a
reload; STOPPING=1 at shutdown. Without $NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1") to systemd; False when not running under a notify-type unit."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp newer systemd versions require for Type=notify-reload."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
