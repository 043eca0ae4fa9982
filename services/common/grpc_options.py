"""Channel options every alise client and server shares (message size limits, own subchannels).

A module of its own, with no import but the standard library, so that clients (services.client,
`alise generate`) get them without importing the server stack (health, reflection, interceptors).
"""

from __future__ import annotations

# Tokens are small, but a 32k-token prompt as uint32 varints plus text fits easily in 64 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Each channel keeps its own connections. With gRPC's default process-wide pool, channels with the
    # same target and options share one subchannel, so a new channel to a peer that has just come back
    # on its port (a restarted engine on :50052) inherits another channel's reconnect backoff and fails
    # at once with the old "Connection refused" (CI saw it: tests/test_grpc_channel_options.py).
    ("grpc.use_local_subchannel_pool", 1),
)
