"""Channel options every alise client and server shares (message size limits).

A module of its own, with no import but the standard library, so that clients (services.client,
`alise generate`) get them without importing the server stack (health, reflection, interceptors).
"""

from __future__ import annotations

# Tokens are small, but a 32k-token prompt as uint32 varints plus text fits easily in 64 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
