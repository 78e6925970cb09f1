"""
Benchmarks of the provider against the Capillary stand-in on loopback: ``python -m benchmarks``.

B1 concurrency against latency, B2 the per-minute cap, B3 rows per second and memory end to end,
B4 the operator's import time. Each figure is printed beside its target; nothing here is a test.
"""
