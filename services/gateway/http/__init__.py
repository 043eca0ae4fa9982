"""The gateway's OpenAI-compatible HTTP API: an ASGI app on uvicorn, in the gateway's own event loop.

It is a second front door to the same GenerationPipeline the gRPC servicer uses: an HTTP body is
translated into an `alise.v1.GenerateRequest`, so validation, prediction and routing happen once,
in one place, for both protocols.
"""
