"""Shipped predictor models (data only; a package so that setuptools ships the files)."""
