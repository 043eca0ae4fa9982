"""`alise up`: run the stack as child processes until Ctrl-C / SIGTERM, restarting dead children.

Lifecycle (one child at a time, dependencies first):

    spawn -> READY line on stdout (learn host:port) -> grpc.health.v1 SERVING -> next child
    ... all SERVING: print every address, the gateway's gRPC and HTTP URLs, and the time taken
    wait for: SIGINT/SIGTERM (exit 0)
            | a child exiting: log it, restart it on the same port after a backoff while the others
              keep serving (services/cli/restart_policy.py); too many deaths in the window: exit 1
    stop in reverse order: SIGTERM, wait drain + grace, SIGKILL   (a 2nd signal: SIGKILL now)

A child that exits or misses its startup timeout aborts startup: its last log lines are printed and
the children already started are stopped, so a failed `up` never leaves a server behind.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Sequence, TextIO, TypeVar

from services.cli.child import ChildExited, ChildProcess
from services.cli.restart_policy import RestartBudget, RestartSettings
from services.cli.stack_plan import ChildSpec, serves_tls, with_port
from services.common.health import wait_until_serving

T = TypeVar("T")
PROG = "alise up"  # prefix of its error lines: `alise up: error: ...` (services/common/cli_errors.py)
EXIT_OK = 0
EXIT_FAILED = 1


class _StopRequested(Exception):
    """SIGINT or SIGTERM arrived while waiting."""


@dataclass(frozen=True)
class LaunchSettings:
    """How the launcher waits for and stops its children."""

    log_dir: pathlib.Path  # one `<name>.log` per child (stderr, then stdout after READY)
    startup_timeout_s: float  # per child: spawn until SERVING
    stop_timeout_s: float  # per child: SIGTERM until SIGKILL
    started_at_s: float  # time.monotonic() when the command started (for the time-to-SERVING figure)
    restarts: RestartSettings = RestartSettings()  # when a dead child is restarted, when the stack gives up
    gateway_http_url: str = ""  # the gateway's OpenAI-compatible base URL, printed once up ("" = unknown)


class StackLauncher:
    """Starts the children of a plan, watches them, and stops them all on the way out."""

    def __init__(self, plan: Sequence[ChildSpec], settings: LaunchSettings, out: TextIO = sys.stdout) -> None:
        self._plan = list(plan)
        self._settings = settings
        self._out = out
        self._children: list[ChildProcess] = []
        self._addresses: dict[str, str] = {}  # child name -> host:port, fixed for the stack's life
        self._stop_requested = asyncio.Event()
        self._stopping = False

    async def run(self) -> int:
        """Runs until stopped; returns the process exit status (0 after a requested stop)."""
        self._install_signal_handlers()
        try:
            await self._start_all()
            return await self._watch()
        except _StopRequested:
            return EXIT_OK
        except ChildExited as error:
            self._report_exit(error, "while starting")
            return EXIT_FAILED
        except TimeoutError as error:
            self._say(f"{PROG}: error: {error}; see {self._settings.log_dir}", err=True)
            return EXIT_FAILED
        finally:
            await self._stop_all()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if self._stop_requested.is_set():  # second signal: do not wait for drains
            self._say("second signal: killing all children now", err=True)
            for child in self._children:
                child.kill()
        self._stop_requested.set()

    async def _start_all(self) -> None:
        addresses = self._addresses
        self._say(f"logs: {self._settings.log_dir}")
        for spec in self._plan:
            child = ChildProcess(spec, self._settings.log_dir / f"{spec.name}.log")
            self._children.append(child)
            await child.start(addresses)
            addresses[spec.name] = await self._until_exit_or_stop(self._become_serving(child), child)
            elapsed_s = time.monotonic() - self._settings.started_at_s
            self._say(f"{spec.name:<10} {addresses[spec.name]:<22} pid {child.pid:<8} SERVING at +{elapsed_s:.2f} s")
        entry = self._children[-1]
        self._say(f"gateway gRPC: {entry.address}")
        if self._settings.gateway_http_url:
            url = self._settings.gateway_http_url
            self._say(f"gateway HTTP: {url} (OpenAI base_url {url}/v1)")
        elapsed_s = time.monotonic() - self._settings.started_at_s
        self._say(  # the last line: scripts and tests wait for it
            f"alise up: {entry.name} serving on {entry.address}; all {len(self._children)} services "
            f"SERVING {elapsed_s:.2f} s after the command started (Ctrl-C stops them)"
        )

    async def _become_serving(self, child: ChildProcess) -> str:
        """The child's address once it serves: its READY line (printed once its server is started and
        its health is SERVING), then a health check where the launcher can speak to it in plaintext."""
        timeout_s = self._settings.startup_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                address = await child.wait_ready()
                if not serves_tls(child.spec.argv):  # a plaintext check cannot reach a TLS server
                    await wait_until_serving(address, timeout_s=timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{child.name} did not report SERVING within {timeout_s:g} s") from None
        return address

    async def _until_exit_or_stop(self, work: Awaitable[T], child: ChildProcess | None) -> T:
        """Result of `work`, unless the child (if any) exits (ChildExited) or a stop is requested first."""
        work_task = asyncio.ensure_future(work)
        exit_task = asyncio.ensure_future(child.wait_exit() if child is not None else asyncio.Event().wait())
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        done, pending = await asyncio.wait({work_task, exit_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if work_task in done:
            return work_task.result()
        if exit_task in done:
            raise ChildExited(child.name, exit_task.result(), child.log_tail())
        raise _StopRequested

    async def _watch(self) -> int:
        """Restarts children that die until a stop request (exit 0) or repeated failure (exit 1)."""
        budget = RestartBudget(self._settings.restarts)
        while True:
            exit_tasks = {asyncio.ensure_future(child.wait_exit()): child for child in self._children}
            stop_task = asyncio.ensure_future(self._stop_requested.wait())
            done, pending = await asyncio.wait({*exit_tasks, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if stop_task in done:
                return EXIT_OK
            child = exit_tasks[next(task for task in done if task in exit_tasks)]
            if not await self._supervise(child, budget):
                return EXIT_FAILED

    async def _supervise(self, child: ChildProcess, budget: RestartBudget) -> bool:
        """Restarts a dead child until it serves again; False when deaths exceed the budget."""
        while True:
            error = ChildExited(child.name, child.returncode, child.log_tail())
            backoff_s = budget.on_death(child.name, time.monotonic())
            if backoff_s is None:
                restarts = self._settings.restarts
                self._report_exit(error, "unexpectedly")
                self._say(
                    f"{PROG}: error: {child.name} died {budget.num_deaths(child.name)} times within "
                    f"{restarts.window_s:g} s (at most {restarts.max_restarts} restarts): stopping the stack",
                    err=True,
                )
                return False
            self._say(
                f"{PROG}: {child.name} (pid {child.pid}) exited with status {child.returncode}; restarting it on "
                f"{self._addresses[child.name]} in {backoff_s:.1f} s (death {budget.num_deaths(child.name)} within "
                f"{self._settings.restarts.window_s:g} s); the others keep serving",
                err=True,
            )
            child, serving = await self._restart(child, backoff_s)
            if serving:
                return True

    async def _restart(self, dead: ChildProcess, backoff_s: float) -> tuple[ChildProcess, bool]:
        """Starts a fresh process for `dead` on its old port: (the new child, whether it is SERVING)."""
        await dead.stop(0.0)  # reaps it and whatever it left in its process group
        await self._until_exit_or_stop(asyncio.sleep(backoff_s), None)
        port = int(self._addresses[dead.name].rsplit(":", 1)[1])
        child = ChildProcess(with_port(dead.spec, port), dead.log_path)
        self._children[self._children.index(dead)] = child
        began_s = time.monotonic()
        await child.start(self._addresses)
        try:
            address = await self._until_exit_or_stop(self._become_serving(child), child)
        except ChildExited:
            return child, False
        elapsed_s = time.monotonic() - began_s
        self._say(f"{child.name:<10} {address:<22} pid {child.pid:<8} SERVING again after {elapsed_s:.2f} s")
        return child, True

    async def _stop_all(self) -> None:
        """Stops the children in reverse start order (the gateway first, memory last)."""
        if not self._children:
            return
        began_s = time.monotonic()
        self._say("stopping: " + ", ".join(child.name for child in reversed(self._children)))
        for child in reversed(self._children):
            try:
                returncode = await child.stop(self._settings.stop_timeout_s)
            except BaseException:  # never leave a child behind, even when stopping one fails
                for remaining in self._children:
                    remaining.kill()
                raise
            self._say(f"{child.name:<10} stopped (status {returncode})")
        self._say(f"all stopped in {time.monotonic() - began_s:.2f} s")

    def _report_exit(self, error: ChildExited, when: str) -> None:
        log_path = self._settings.log_dir / f"{error.name}.log"
        self._say(
            f"{PROG}: error: {error.name} exited {when} with status {error.returncode}; last lines of {log_path}:",
            err=True,
        )
        for line in (error.log_tail or "(empty log)").splitlines():
            self._say(f"  | {line}", err=True)

    def _say(self, line: str, *, err: bool = False) -> None:
        """Prints a status line; a closed terminal or pipe must not stop the shutdown."""
        try:
            print(line, file=sys.stderr if err else self._out, flush=True)
        except (OSError, ValueError):
            pass


async def run_stack(plan: Sequence[ChildSpec], settings: LaunchSettings) -> int:
    """Runs the stack described by `plan`; the entry point of `alise up` (and of tests with fakes)."""
    return await StackLauncher(plan, settings).run()
