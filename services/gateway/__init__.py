"""The gateway: alise's public gRPC face (validate, tokenize, predict, forward, stream back)."""
