"""A local stack started for one benchmark phase (`alise bench serve --start-stack`).

The same children as `alise up` (services.cli.stack_plan) started the same way (services.cli.child:
own process group, parent-death signal, READY line, then grpc.health SERVING), but as a context
manager that yields the gateway address and stops every child, in reverse order, on the way out,
whatever happened inside. One stack per scheduling policy, so policies never share warm state.

    async with local_stack(up_config, log_dir) as gateway_address: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from typing import AsyncIterator

from services.cli.child import ChildExited, ChildProcess
from services.cli.stack_plan import ServiceName, UpConfig, build_stack_plan
from services.common.health import wait_until_serving
from services.common.model_catalog import DEFAULT_MODEL

SCHEDULER_POLICY_FLAG = "--scheduler-policy"  # services/engine/config.py


class StackStartError(RuntimeError):
    """A child of the stack died or missed its deadline while starting (its log tail is in the message)."""


def stack_config(
    policy: str,
    *,
    engine_args: tuple[str, ...],
    with_predictor: bool,
    startup_timeout_s: float,
    model: str = "",
    with_memory: bool = True,
) -> UpConfig:
    """An `alise up` configuration on OS-chosen ports whose engine runs `policy` (and `model`, if given)."""
    return UpConfig(
        model=model or DEFAULT_MODEL,
        gateway_port=0,
        gateway_http_port=0,  # several stacks run at once: none may take the fixed HTTP port
        # nor the fixed engine port: gRPC servers bind with SO_REUSEPORT, so a second engine on 50052 starts
        # without error and the kernel spreads the gateways' connections over both engines (policies mixed)
        engine_port=0,
        with_predictor=with_predictor,
        with_memory=with_memory,
        log_level="WARNING",
        drain_s=0.0,
        stop_grace_s=10.0,
        startup_timeout_s=startup_timeout_s,
        extra_args=((ServiceName.ENGINE.value, (*engine_args, f"{SCHEDULER_POLICY_FLAG}={policy}")),),
    )


@contextlib.asynccontextmanager
async def local_stack(config: UpConfig, log_dir: pathlib.Path) -> AsyncIterator[str]:
    """Starts the stack, yields the gateway's host:port, stops it; StackStartError if a child fails to start."""
    children: list[ChildProcess] = []
    addresses: dict[str, str] = {}
    try:
        for spec in build_stack_plan(config):
            child = ChildProcess(spec, log_dir / f"{spec.name}.log")
            children.append(child)
            await child.start(addresses)
            addresses[spec.name] = await _serving_address(child, config.startup_timeout_s)
        yield addresses[ServiceName.GATEWAY.value]
    finally:
        for child in reversed(children):
            await child.stop(config.drain_s + config.stop_grace_s)


async def _serving_address(child: ChildProcess, timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            address = await child.wait_ready()
            await wait_until_serving(address, timeout_s=timeout_s)
    except TimeoutError:
        message = f"{child.name} did not report SERVING within {timeout_s:g} s; see {child.log_path}"
        raise StackStartError(message) from None
    except ChildExited as error:  # the child died while starting
        raise StackStartError(f"{child.name} failed to start ({error}); last log lines:\n{child.log_tail()}") from None
    return address
