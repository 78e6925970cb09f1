"""
Benchmarks of the provider against the Capillary stand-in on loopback: ``python -m benchmarks``.

B1 concurrency against latency, B2 the per-minute cap, B3 rows per second and memory end to end,
B4 the operator's import time, B5 the org run sharing one rate budget in Redis, B6 rows per second
and peak memory of a load into PostgreSQL, P1 the operator against dlt's ``rest_api`` source on the
same job. Each figure is printed beside its target;
nothing here is a test.
"""
