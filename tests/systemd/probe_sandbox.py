"""Run inside tests/systemd/sandbox.py: report which of the unit's rules hold (one JSON line on stdout)."""

from __future__ import annotations

import json
import mmap
import os
import socket


def attempt(action: object) -> str:
    try:
        action()  # type: ignore[operator]
    except PermissionError:
        return "denied"
    except OSError as err:
        return f"error {err.errno}"
    return "allowed"


def main() -> None:
    results = {
        "inet_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        "unix_socket": attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()),
        "netlink_socket": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
        "packet_socket": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()),
        # @resources is removed from the allow list.
        "sched_setaffinity": attempt(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
        # @privileged is removed (chroot is one of them).
        "chroot": attempt(lambda: os.chroot("/")),
        "wx_memory": attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
