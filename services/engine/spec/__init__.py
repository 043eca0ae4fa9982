"""Speculative decoding: drafters, verification and acceptance tracking (see method.py)."""
