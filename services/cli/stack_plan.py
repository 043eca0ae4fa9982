"""What `alise up` starts: one `ChildSpec` per service, in dependency order.

The plan is plain data so it can be checked without starting anything. Peer addresses are not in
the argv yet, because with `--port 0` a peer's port is known only once it has printed READY; the
launcher appends `flag address` for each entry of `peer_flags` when it starts the child.

    memory  <- engine (--memory-address)
    predictor (optional)
    engine  <- gateway (--engine-address), predictor <- gateway (--predictor-address)
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from services.common.model_catalog import DEFAULT_MODEL

LOOPBACK_HOST = "127.0.0.1"


class ServiceName(str, enum.Enum):
    """The services `alise up` starts; the value is the `services.<value>` module and log stem."""

    MEMORY = "memory"
    PREDICTOR = "predictor"
    ENGINE = "engine"
    GATEWAY = "gateway"


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child process of the stack."""

    name: str  # short name, e.g. "engine": used in messages and as the log file stem
    argv: tuple[str, ...]  # full command line, --port included, peer addresses not yet
    peer_flags: tuple[tuple[str, str], ...] = ()  # (flag, peer name): flag receives the peer's address


def serves_tls(argv: tuple[str, ...] | list[str]) -> bool:
    """True when a command line gives its server a TLS certificate (`--tls-cert F` or `--tls-cert=F`)."""
    return any(arg == "--tls-cert" or arg.startswith("--tls-cert=") for arg in argv)


@dataclass(frozen=True)
class UpConfig:
    """Settings of `alise up`, validated once at the entry point."""

    gateway_host: str = LOOPBACK_HOST  # interface the gateway listens on (the others stay on loopback)
    gateway_port: int = 50051  # 0 = the OS picks
    # fixed by default, so `grpcurl localhost:50052 ...EngineService/GetStats` works; 0 = the OS picks
    engine_port: int = 50052
    gateway_http_port: int = 8000  # the gateway's OpenAI-compatible HTTP port; 0 = the OS picks
    predictor_port: int = 0  # 0 = the OS picks
    memory_port: int = 0  # 0 = the OS picks
    model: str = DEFAULT_MODEL  # passed to the engine as --model
    with_predictor: bool = True  # False: no predictor; the gateway falls back to its prior
    with_memory: bool = True  # False: no memory service; the engine recomputes every preempted request
    log_level: str = "INFO"  # passed to every child as --log-level
    drain_s: float = 5.0  # passed to every child as --drain-seconds
    stop_grace_s: float = 10.0  # after SIGTERM, wait drain_s + this before SIGKILL
    startup_timeout_s: float = 600.0  # per child: from spawn until health SERVING
    extra_args: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (service, extra flags appended verbatim)

    def __post_init__(self) -> None:
        ports = {
            "gateway": self.gateway_port,
            "gateway-http": self.gateway_http_port,
            "engine": self.engine_port,
            "predictor": self.predictor_port,
            "memory": self.memory_port,
        }
        for name, value in ports.items():
            if not 0 <= value <= 65535:
                raise ValueError(f"--{name}-port must be in [0, 65535], got {value}")
        fixed = [(name, value) for name, value in ports.items() if value != 0]
        absent = {
            name for name, present in (("predictor", self.with_predictor), ("memory", self.with_memory)) if not present
        }
        fixed = [(name, value) for name, value in fixed if name not in absent]
        values = [value for _, value in fixed]
        if len(set(values)) != len(values):
            raise ValueError(f"two services cannot share a port: {dict(fixed)}")
        if not self.model:
            raise ValueError("--model must not be empty")
        if self.drain_s < 0 or self.stop_grace_s < 0:
            raise ValueError("--drain-seconds and --stop-grace-s must be >= 0")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"--startup-timeout-s must be > 0, got {self.startup_timeout_s}")
        known = {service.value for service in ServiceName}
        for service, _ in self.extra_args:
            if service not in known:
                raise ValueError(f"unknown service {service!r} for extra args; expected one of {sorted(known)}")

    def extra_for(self, service: ServiceName) -> tuple[str, ...]:
        """Extra flags given for `service`, in the order given."""
        return tuple(arg for name, args in self.extra_args if name == service.value for arg in args)


def _service_argv(
    config: UpConfig, service: ServiceName, host: str, port: int, python: str, *flags: str
) -> tuple[str, ...]:
    common = ("--host", host, "--port", str(port), "--log-level", config.log_level)
    drain = ("--drain-seconds", repr(config.drain_s))
    return (python, "-m", f"services.{service.value}", *common, *drain, *flags, *config.extra_for(service))


def build_stack_plan(config: UpConfig, *, python: str = sys.executable) -> list[ChildSpec]:
    """The children to start, dependencies first; stopping goes in reverse order."""
    plan = []
    if config.with_memory:
        plan.append(
            ChildSpec(
                ServiceName.MEMORY.value,
                _service_argv(config, ServiceName.MEMORY, LOOPBACK_HOST, config.memory_port, python),
            )
        )
    gateway_peers = [("--engine-address", ServiceName.ENGINE.value)]
    if config.with_predictor:
        plan.append(
            ChildSpec(
                ServiceName.PREDICTOR.value,
                _service_argv(config, ServiceName.PREDICTOR, LOOPBACK_HOST, config.predictor_port, python),
            )
        )
        gateway_peers.append(("--predictor-address", ServiceName.PREDICTOR.value))
    engine_argv = _service_argv(
        config, ServiceName.ENGINE, LOOPBACK_HOST, config.engine_port, python, "--model", config.model
    )
    engine_peers = (("--memory-address", ServiceName.MEMORY.value),) if config.with_memory else ()
    plan.append(ChildSpec(ServiceName.ENGINE.value, engine_argv, engine_peers))
    gateway_argv = _service_argv(
        config,
        ServiceName.GATEWAY,
        config.gateway_host,
        config.gateway_port,
        python,
        "--http-port",
        str(config.gateway_http_port),
    )
    plan.append(ChildSpec(ServiceName.GATEWAY.value, gateway_argv, tuple(gateway_peers)))
    return plan


def with_port(spec: ChildSpec, port: int) -> ChildSpec:
    """The same child bound to `port`: a restarted child keeps the address its peers were given."""
    argv = list(spec.argv)
    index = argv.index("--port")
    argv[index + 1] = str(port)
    return ChildSpec(spec.name, tuple(argv), spec.peer_flags)
