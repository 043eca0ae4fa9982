"""`python -m services.cli.child_exec ARGV...`: prepares a service process, then execs ARGV.

It moves into its own process group (so a terminal's Ctrl-C reaches only the launcher, which stops
the services in order) and, on Linux, asks the kernel to SIGTERM it when the launcher dies (the
setting survives exec), then replaces itself with the service.

Why a separate process instead of Popen's preexec_fn / process_group: both make Python fork()
rather than vfork(), and fork() in the launcher, which has gRPC threads, runs gRPC's fork handlers
in the child; the child then closes its inherited descriptors before exec and gRPC's restarted
poller aborted it ("epoll_wait error: Bad file descriptor", SIGABRT) in about 1 start in 12.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """Asks the kernel to SIGTERM this process when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m services.cli.child_exec PROGRAM [ARGS...]")
    os.setpgid(0, 0)
    parent_pid = os.getppid()
    die_with_parent()
    if os.getppid() != parent_pid:  # the launcher died before the death signal was armed
        sys.exit(1)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
