"""Benchmarks: waypoint against Envoy, same run, same machine, per CPU-second (see README.md)."""
