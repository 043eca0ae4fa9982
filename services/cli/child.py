"""One child process of the stack: spawn, learn its address from READY, stop it for sure.

Invariants:
- the child runs in its own process group, so a Ctrl-C at the terminal reaches only the launcher,
  which then stops the children in reverse dependency order (gateway first, memory last);
- on Linux the child also gets SIGTERM if the launcher dies without cleaning up (PR_SET_PDEATHSIG),
  so even `kill -9` of the launcher leaves no server holding a port;
- stderr goes straight to `<log_dir>/<name>.log`; stdout is read for the READY line and everything
  else on it is appended to the same file, so the pipe never fills and blocks the child.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import signal
import sys
from typing import Mapping

from services.cli.stack_plan import ChildSpec

READY_PREFIX = "READY "


class ChildExited(RuntimeError):
    """A child ended while it was expected to be starting or serving."""

    def __init__(self, name: str, returncode: int | None, log_tail: str) -> None:
        super().__init__(f"{name} exited with status {returncode}")
        self.name = name  # which child
        self.returncode = returncode  # its exit status (negative: killed by that signal)
        self.log_tail = log_tail  # its last log lines, for the user


def parse_ready_line(line: str) -> str | None:
    """`READY <services> <host:port>` -> host:port; None for any other line."""
    if not line.startswith(READY_PREFIX):
        return None
    fields = line.split()
    return fields[-1] if len(fields) >= 3 else None


class ChildProcess:
    """A started (or about to be started) service process."""

    def __init__(self, spec: ChildSpec, log_path: pathlib.Path) -> None:
        self.spec = spec
        self.log_path = log_path  # the child's stderr, then its stdout after READY
        self.address: str | None = None  # host:port from its READY line
        self._process: asyncio.subprocess.Process | None = None
        self._stdout_pump: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    def argv(self, peer_addresses: Mapping[str, str]) -> list[str]:
        """The spec's argv plus `flag address` for each peer (all peers must be known)."""
        argv = list(self.spec.argv)
        for flag, peer in self.spec.peer_flags:
            argv += [flag, peer_addresses[peer]]
        return argv

    async def start(self, peer_addresses: Mapping[str, str]) -> None:
        """Spawns the child; its stderr goes to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log_file:
            # child_exec sets the process group and the parent-death signal (see its docstring).
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli.child_exec",
                *self.argv(peer_addresses),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
            )

    async def wait_ready(self) -> str:
        """Reads stdout until the READY line; returns the announced address.

        Raises ChildExited when stdout closes first (the child died or closed it). Call it under
        a timeout. Afterwards the rest of stdout is copied to the log in the background.
        """
        assert self._process is not None and self._process.stdout is not None, "start() first"
        stdout = self._process.stdout
        while True:
            raw = await stdout.readline()
            if not raw:
                returncode = await self._process.wait()
                raise ChildExited(self.name, returncode, self.log_tail())
            line = raw.decode(errors="replace")
            address = parse_ready_line(line.strip())
            if address is not None:
                self.address = address
                self._stdout_pump = asyncio.create_task(self._copy_stdout_to_log(stdout))
                return address
            self._append_to_log(raw)

    async def _copy_stdout_to_log(self, stdout: asyncio.StreamReader) -> None:
        while raw := await stdout.readline():
            self._append_to_log(raw)

    def _append_to_log(self, raw: bytes) -> None:
        with open(self.log_path, "ab") as log_file:
            log_file.write(raw)

    async def wait_exit(self) -> int:
        """Waits until the child ends; returns its exit status."""
        assert self._process is not None, "start() first"
        return await self._process.wait()

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait up to timeout_s, then SIGKILL its whole process group. Returns the status."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            _signal_quietly(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except asyncio.TimeoutError:
                _kill_group_quietly(process.pid)
                await process.wait()
        else:
            _kill_group_quietly(process.pid)  # a dead leader may have left grandchildren
        if self._stdout_pump is not None:
            await asyncio.gather(self._stdout_pump, return_exceptions=True)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the child's process group now (the impatient second Ctrl-C)."""
        if self._process is not None and self._process.returncode is None:
            _kill_group_quietly(self._process.pid)

    def log_tail(self, num_lines: int = 20) -> str:
        """The last num_lines lines of the child's log ("" when there is none)."""
        try:
            with open(self.log_path, "rb") as log_file:
                lines = collections.deque(log_file, maxlen=num_lines)
        except FileNotFoundError:
            return ""
        return b"".join(lines).decode(errors="replace").rstrip()


def _signal_quietly(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_group_quietly(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
