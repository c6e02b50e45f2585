"""Benchmarks: `python benchmarks/bench.py` (see README.md)."""
