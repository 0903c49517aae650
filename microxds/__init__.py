"""microxds: a small xDS control plane (ADS SotW + Delta) and client."""

__version__ = "0.1.0"
