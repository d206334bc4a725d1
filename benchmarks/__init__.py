"""Benchmarks, the per-row official-loop baseline, and the loopback stubs the tests and benchmarks share."""
