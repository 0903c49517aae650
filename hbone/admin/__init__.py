"""Admin, metrics and readiness ports: one implementation for every daemon.

`options` (flags and config keys), `http` (the small HTTP/1.1 server), `telemetry` (Prometheus metrics and open
tunnels), `service` (the three ports of one daemon). Import the submodules; this package imports nothing.
"""
