"""A second alise gRPC server on a port a first one holds fails to bind (gRPC's default SO_REUSEPORT
would let it bind silently and the kernel would share the first server's clients with it)."""

from __future__ import annotations

import pytest

from services.common.server import PortBindError, start_server

pytestmark = pytest.mark.timeout(30)


async def test_a_port_held_by_another_alise_server_is_refused():
    first = await start_server(host="127.0.0.1", port=0, register=lambda server: None, service_names=[])
    try:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(PortBindError, match=f"127.0.0.1:{port}"):
            await start_server(host="127.0.0.1", port=port, register=lambda server: None, service_names=[])
    finally:
        await first.stop(0)
