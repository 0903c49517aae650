"""HBONE: TCP streams carried as HTTP/2 CONNECT over mutual TLS with SPIFFE identities."""

__version__ = "0.1.0"
