"""Reliability and security: faults, load, bad input, malformed answers, secrets, transport, isolation."""
