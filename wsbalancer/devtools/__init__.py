"""Harnesses for tests, benchmarks and the demo; not on the runtime path."""
