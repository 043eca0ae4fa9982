"""The engine: one model replica with continuous batching over a paged KV cache."""
