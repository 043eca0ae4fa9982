"""alise services: gateway, predictor, engine, memory, and what they share (common)."""
