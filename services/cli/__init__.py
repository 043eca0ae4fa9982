"""The `alise` command: launch a local stack (`up`), stream a completion (`generate`), benchmark the
running stack (`bench stack`), and reach the predictor's own tools (`predictor ...`).

The CLI is a client like any other: it talks to the services only through their gRPC contracts and
starts them only as separate processes (`python -m services.X`), never by importing them.
"""
