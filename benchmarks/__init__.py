"""Benchmarks: run from a checkout as `xdream bench ...`; not shipped in the wheel."""
