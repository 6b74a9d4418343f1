"""Vigil benchmarks: `python -m bench.run [--quick]` (see README.md)."""
