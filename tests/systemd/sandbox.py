"""Run `dcim` (or any module) under the kernel rules dcim.service asks systemd for, without systemd:

    python sandbox.py dcim.app.cli run -c dcim.yaml

- MemoryDenyWriteExecute=yes: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3+).
- SystemCallFilter=@system-service, SystemCallFilter=~@privileged @resources, SystemCallErrorNumber=EPERM,
  SystemCallArchitectures=native and RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6: a seccomp filter
  (python3-seccomp, Debian's libseccomp binding) allowing exactly the system calls in $DCIM_TEST_SYSCALLS,
  the list `systemd-analyze syscall-filter` expands those groups to, and socket() for those families only.

Either part is applied only when the kernel / the binding has it; what was applied is printed to stderr as
`sandbox: mdwe=yes seccomp=yes`, so a test can tell what it really checked.
"""

from __future__ import annotations

import ctypes
import errno
import os
import runpy
import socket
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SYSTEM_PACKAGES = "/usr/lib/python3/dist-packages"


def apply_mdwe() -> bool:
    return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0)


def apply_seccomp(syscalls: list[str]) -> bool:
    if not syscalls:
        return False
    sys.path.append(SYSTEM_PACKAGES)
    try:
        import seccomp
    except ImportError:
        return False
    finally:
        sys.path.remove(SYSTEM_PACKAGES)
    rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in syscalls:
        if name == "socket":
            continue
        try:
            rules.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # a name systemd knows that this architecture does not have
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        rules.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, int(family)))
    rules.load()
    return True


def main() -> None:
    module, args = sys.argv[1], sys.argv[2:]
    mdwe = apply_mdwe()
    filtered = apply_seccomp([s for s in os.environ.get("DCIM_TEST_SYSCALLS", "").split(",") if s])
    print(f"sandbox: mdwe={'yes' if mdwe else 'no'} seccomp={'yes' if filtered else 'no'}", file=sys.stderr,
          flush=True)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__")


if __name__ == "__main__":
    main()
