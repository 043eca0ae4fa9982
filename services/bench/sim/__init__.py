"""Discrete-event simulator: the engine's real Scheduler on a virtual clock with a GPU cost model."""
