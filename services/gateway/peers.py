"""The gateway's peers: the engine pool and the (optional) predictor pool, built from its config.

Both pools connect lazily, so the gateway starts while its peers are still down; each discovers its
replicas from the configured spec (see replica_discovery) and health-checks them on its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from services.gateway.config import GatewayConfig
from services.gateway.engine_pool import EnginePool, EnginePoolSettings
from services.gateway.engine_replica import ChannelFactory
from services.gateway.predictor_pool import PredictorPool
from services.gateway.replica_health import HealthSettings


@dataclass
class GatewayPeers:
    """The pools one gateway talks to; started and closed together."""

    engines: EnginePool  # every engine replica; chooses one per request
    predictors: PredictorPool | None  # every predictor replica; None = no predictor configured

    @property
    def predictor_stub(self) -> Any | None:
        """A PredictorServiceStub look-alike spreading calls over the replicas (None = no predictor)."""
        return None if self.predictors is None else self.predictors.stub

    async def start(self) -> None:
        """First DNS lookups; health checks begin in the background."""
        pools = [self.engines] + ([self.predictors] if self.predictors is not None else [])
        await asyncio.gather(*(pool.start() for pool in pools))

    async def close(self) -> None:
        await self.engines.close()
        if self.predictors is not None:
            await self.predictors.close()


def build_peers(config: GatewayConfig, make_channel: ChannelFactory) -> GatewayPeers:
    """Hands each pool only the config fields it needs."""
    health = HealthSettings(
        interval_s=config.health_check_interval_s,
        timeout_s=config.health_check_timeout_s,
        max_failures=config.max_health_failures,
    )
    engines = EnginePool(
        EnginePoolSettings(
            spec=config.engine_address,
            policy=config.engine_routing,
            health=health,
            discovery_interval_s=config.discovery_interval_s,
            max_attempts=config.max_engine_attempts,
            max_queued_work_s=config.max_queued_work_s,
            max_queued_steps=config.max_queued_steps,
        ),
        make_channel,
    )
    predictors = None
    if config.predictor_address:
        predictors = PredictorPool(
            config.predictor_address,
            make_channel=make_channel,
            health=health,
            discovery_interval_s=config.discovery_interval_s,
        )
    return GatewayPeers(engines, predictors)
