"""`alise up`'s launcher against fake services: startup order and peer flags, clean stop on SIGTERM
with no process left behind, startup failure, a child dying later, SIGKILL escalation, and the
launcher itself being killed.

Each fake is a real gRPC server (services.common.server, health only) started from the same argv
the real plan builds, with `-m services.X` replaced by a fake script; it records its argv.
The launcher runs in its own process (a small driver script), as `alise up` would.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from services.cli.stack_plan import serves_tls
from services.common.model_catalog import DEFAULT_MODEL
from tests.tls_certs import issue, make_authority

FAKE_SERVICE = r"""
import argparse, asyncio, json, os, pathlib, signal, sys
from services.common.flags import add_server_flags
from services.common.server import ServiceHandle, run_until_signal, start_server
from services.common.tls import add_tls_flags, tls_from_args

parser = argparse.ArgumentParser()
add_server_flags(parser, default_port=0)
add_tls_flags(parser)
parser.add_argument("--name", required=True)
parser.add_argument("--record-dir", required=True)
parser.add_argument("--fail-at-start", action="store_true")
parser.add_argument("--exit-after-s", type=float)
parser.add_argument("--ignore-sigterm", action="store_true")
args, _ = parser.parse_known_args()
pathlib.Path(args.record_dir, args.name + ".json").write_text(json.dumps(sys.argv[1:]))
if args.fail_at_start:
    print(f"fake {args.name}: cannot load model weights", file=sys.stderr, flush=True)
    sys.exit(3)

async def main():
    running = await start_server(host=args.host, port=args.port, register=lambda server: None,
                                 service_names=[f"alise.v1.Fake{args.name}"], tls=tls_from_args(args))
    handle = ServiceHandle(running)
    if args.exit_after_s is not None:
        asyncio.get_running_loop().call_later(args.exit_after_s, os._exit, 4)
    if args.ignore_sigterm:
        print(f"READY fake {handle.address}", flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        await asyncio.Event().wait()
    await run_until_signal(handle, grace_s=args.drain_seconds)

asyncio.run(main())
"""

DRIVER = r"""
import asyncio, json, pathlib, sys, time
from services.cli.launcher import LaunchSettings, run_stack
from services.cli.stack_plan import ChildSpec, UpConfig, build_stack_plan

params = json.loads(sys.argv[1])
config = UpConfig(gateway_port=0, engine_port=0, gateway_http_port=0, with_predictor=params["with_predictor"], drain_s=0.5,
                  stop_grace_s=params["stop_grace_s"], startup_timeout_s=20)
plan = []
for spec in build_stack_plan(config):
    assert spec.argv[1:3] == ("-m", "services." + spec.name), spec.argv
    argv = (sys.executable, params["fake"], "--name", spec.name, "--record-dir", params["record_dir"],
            *spec.argv[3:], *params["extra"].get(spec.name, []))
    plan.append(ChildSpec(spec.name, argv, spec.peer_flags))
settings = LaunchSettings(log_dir=pathlib.Path(params["log_dir"]), startup_timeout_s=20,
                          stop_timeout_s=config.drain_s + config.stop_grace_s, started_at_s=time.monotonic())
sys.exit(asyncio.run(run_stack(plan, settings)))
"""

STARTUP_TIMEOUT_S = 20.0


class Stack:
    """A launcher process running fake services, with helpers to read its output."""

    def __init__(self, tmp_path: pathlib.Path, *, extra=None, with_predictor=True, stop_grace_s=5.0) -> None:
        (tmp_path / "fake_service.py").write_text(FAKE_SERVICE)
        (tmp_path / "driver.py").write_text(DRIVER)
        self.record_dir = tmp_path / "record"
        self.record_dir.mkdir()
        self.log_dir = tmp_path / "logs"
        params = {
            "fake": str(tmp_path / "fake_service.py"),
            "record_dir": str(self.record_dir),
            "log_dir": str(self.log_dir),
            "extra": extra or {},
            "with_predictor": with_predictor,
            "stop_grace_s": stop_grace_s,
        }
        self.process = subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), json.dumps(params)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout_lines: list[str] = []
        self.pids: dict[str, int] = {}  # child name -> pid, from the launcher's per-child lines
        self.addresses: dict[str, str] = {}  # child name -> host:port
        self._new_line = threading.Condition()
        self._reader: threading.Thread | None = None

    def read_stdout_in_background(self) -> "Stack":
        self._reader = threading.Thread(target=self._read_lines, args=(self.process.stdout,), daemon=True)
        self._reader.start()
        return self

    def _read_lines(self, stream) -> None:
        for line in stream:
            fields = line.split()
            with self._new_line:
                if len(fields) >= 4 and fields[2] == "pid":
                    self.addresses[fields[0]] = fields[1]
                    self.pids[fields[0]] = int(fields[3])
                self.stdout_lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self.stdout_lines.append("")  # EOF marker
            self._new_line.notify_all()

    def read_until(self, marker: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Waits for a launcher stdout line containing marker (fails on EOF or timeout)."""
        with self._new_line:
            self._new_line.wait_for(lambda: self._seen(marker) or "" in self.stdout_lines, timeout_s)
            if not self._seen(marker):
                pytest.fail(f"no {marker!r} (timeout or EOF); stdout: {self.stdout_lines}")

    def _seen(self, marker: str) -> bool:
        return any(marker in line for line in self.stdout_lines)

    def finish(self, timeout_s: float = 30.0) -> tuple[int, str, str]:
        """Waits for the launcher to end: (exit status, all stdout, all stderr)."""
        err = self.process.stderr.read()
        self.process.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout_s)
        return self.process.returncode, "".join(self.stdout_lines), err

    def recorded_argv(self, name: str) -> list[str]:
        return json.loads((self.record_dir / f"{name}.json").read_text())

    def clean_up(self) -> None:
        """After a failed test: stop the launcher, then kill any child it left."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pid in self.pids.values():
            if not _is_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_stack(tmp_path):
    """start_stack(**options) -> a Stack whose stdout is read in the background; cleaned up after."""
    stacks: list[Stack] = []

    def start(*, read_stdout: bool = True, **options) -> Stack:
        stack = Stack(tmp_path, **options)
        stacks.append(stack)
        return stack.read_stdout_in_background() if read_stdout else stack

    yield start
    for stack in stacks:
        stack.clean_up()


def _is_gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_all_gone(pids, timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if not _is_gone(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_starts_in_order_passes_peer_addresses_and_stops_cleanly_on_sigterm(start_stack):
    stack = start_stack()
    stack.read_until("alise up:")
    assert list(stack.pids) == ["memory", "predictor", "engine", "gateway"]
    engine_argv = stack.recorded_argv("engine")
    gateway_argv = stack.recorded_argv("gateway")
    assert _flag(engine_argv, "--memory-address") == stack.addresses["memory"]
    assert _flag(engine_argv, "--model") == DEFAULT_MODEL
    assert _flag(gateway_argv, "--engine-address") == stack.addresses["engine"]
    assert _flag(gateway_argv, "--predictor-address") == stack.addresses["predictor"]
    assert f"serving on {stack.addresses['gateway']}" in stack.stdout_lines[-1]
    assert not any(_is_gone(pid) for pid in stack.pids.values())

    stack.process.send_signal(signal.SIGTERM)
    returncode, out, err = stack.finish()
    assert returncode == 0, err
    assert "stopping: gateway, engine, predictor, memory" in out
    assert _wait_all_gone(stack.pids.values(), timeout_s=0.5) == []
    assert (stack.log_dir / "engine.log").exists()


def test_a_gateway_serving_tls_is_ready_on_its_ready_line(start_stack, tmp_path):
    """A plaintext health check cannot reach a TLS server: the launcher must not wait on one."""
    pki = tmp_path / "pki"
    pki.mkdir()
    tls = issue(make_authority(pki), pki, "gateway")
    stack = start_stack(extra={"gateway": ["--tls-cert", tls.cert_path, "--tls-key", tls.key_path]})
    stack.read_until("alise up:")
    assert f"serving on {stack.addresses['gateway']}" in stack.stdout_lines[-1]
    stack.process.send_signal(signal.SIGTERM)
    returncode, _, err = stack.finish()
    assert returncode == 0, err


def test_serves_tls_reads_both_flag_spellings():
    assert serves_tls(["x", "--tls-cert", "c.pem"]) and serves_tls(["--tls-cert=c.pem"])
    assert not serves_tls(["--tls-ca", "ca.pem", "--tls-certificate-typo"])


def test_child_failing_at_startup_aborts_with_its_log_and_stops_the_others(start_stack):
    stack = start_stack(extra={"engine": ["--fail-at-start"]}, with_predictor=False)
    returncode, out, err = stack.finish()
    assert returncode == 1
    assert "alise up: error: engine exited while starting with status 3" in err
    assert "cannot load model weights" in err
    assert "gateway" not in stack.pids and "memory" in stack.pids
    assert _wait_all_gone(stack.pids.values(), timeout_s=0.5) == []


def test_child_dying_later_stops_the_stack_with_nonzero_status(start_stack):
    stack = start_stack(extra={"memory": ["--exit-after-s", "1.0"]}, with_predictor=False)
    stack.read_until("alise up:")
    returncode, out, err = stack.finish()
    assert returncode == 1
    assert "alise up: error: memory exited unexpectedly with status 4" in err
    assert _wait_all_gone(stack.pids.values(), timeout_s=0.5) == []


def test_child_ignoring_sigterm_is_killed_after_the_grace(start_stack):
    stack = start_stack(extra={"engine": ["--ignore-sigterm"]}, with_predictor=False, stop_grace_s=0.5)
    stack.read_until("alise up:")
    began_s = time.monotonic()
    stack.process.send_signal(signal.SIGINT)
    returncode, out, err = stack.finish()
    assert returncode == 0, err
    assert f"engine     stopped (status {-signal.SIGKILL})" in out
    assert time.monotonic() - began_s < 5.0
    assert _wait_all_gone(stack.pids.values(), timeout_s=0.5) == []


def test_a_closed_stdout_does_not_stop_the_shutdown(start_stack):
    """The terminal may be gone when the stop comes: EPIPE on a status line must not skip SIGKILL."""
    stack = start_stack(
        read_stdout=False, extra={"engine": ["--ignore-sigterm"]}, with_predictor=False, stop_grace_s=0.5
    )
    stack._read_lines(_lines_until(stack.process.stdout, "alise up:"))
    stack.process.stdout.close()  # the next status line written by the launcher hits a broken pipe
    stack.process.send_signal(signal.SIGTERM)
    stack.process.wait(timeout=15)
    assert _wait_all_gone(stack.pids.values(), timeout_s=2.0) == []


def _lines_until(stream, marker: str):
    for line in stream:
        yield line
        if marker in line:
            return


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_when_the_launcher_is_killed(start_stack):
    stack = start_stack(with_predictor=False)
    stack.read_until("alise up:")
    stack.process.kill()
    stack.finish()
    assert _wait_all_gone(stack.pids.values(), timeout_s=10.0) == []


def test_a_killed_child_is_restarted_on_its_port_while_the_others_keep_serving(start_stack):
    stack = start_stack()
    stack.read_until("alise up:")
    first = dict(stack.pids)
    address = stack.addresses["predictor"]
    os.kill(first["predictor"], signal.SIGKILL)
    stack.read_until("SERVING again")
    assert stack.addresses["predictor"] == address  # its peers' flags still point at it
    assert stack.pids["predictor"] != first["predictor"]
    assert all(not _is_gone(first[name]) for name in ("memory", "engine", "gateway"))
    stack.process.send_signal(signal.SIGTERM)
    returncode, out, err = stack.finish()
    assert returncode == 0, err
    assert (
        f"predictor (pid {first['predictor']}) exited with status {-signal.SIGKILL}; restarting it on {address}" in err
    )
    assert _wait_all_gone(stack.pids.values(), timeout_s=0.5) == []
