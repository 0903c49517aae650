"""Authorization: Istio `Authorization` domain types and the pure engine that decides connections.

Import from the submodules (`hbone.authz.model`, `.engine`, `.config`, `.defaults`); this package does nothing at
import time.
"""
