"""Harness for interop tests against real third-party peers (Envoy, etcd, curl, nghttp2, node, ...).

Everything here binds 127.0.0.1 and cleans up after itself. Missing peers skip the test with a reason
naming the installer, except when ``CI=true``: there a missing peer fails, so CI cannot silently run
without its interop coverage. Install the peers with ``tools/install-peers.sh``.

Tests import from ``tests.peers``; the modules are:

- ``process``: peer availability, ports, :class:`ProcessPeer` and short-lived peer commands
- ``servers``: loopback echo/TLS echo/HTTP servers and a proxy-free HTTP client
- ``envoy``: the Envoy binary, ``envoy --mode validate`` and :class:`Envoy` with its admin API
- ``envoy_config``: Envoy bootstrap builders (tcp_proxy, HBONE server and client)
- ``etcd``: :class:`Etcd`, a single-member etcd with etcdctl
- ``pki``: :func:`make_test_pki`, Istio-style test certificates
- ``gopeers``: the Go peers built from ``tests/peers/go`` (go-control-plane, istiod-fake, grpc-go, h2spec)
- ``istioecho``: istio's echo client and server (istio's Go HBONE stack)
- ``h2app``: a plain HTTP/2 listener on ``hbone.net`` for h2spec; ``recorder``: a byte-recording relay
"""

from tests.peers.envoy import (
    Envoy,
    StatValue,
    ValidationResult,
    check_loopback,
    envoy_binary,
    envoy_validate,
    require_envoy,
)
from tests.peers.envoy_config import (
    envoy_hbone_client_config,
    envoy_hbone_server_config,
    envoy_static_cluster,
    envoy_tcp_proxy_config,
)
from tests.peers.etcd import Etcd
from tests.peers.pki import TRUST_DOMAIN, TestIdentity, TestPKI, make_test_pki, peer_uri_sans, spiffe_id_for
from tests.peers.process import (
    INSTALL_HINT,
    LOOPBACK,
    NO_ADMIN,
    NODE_DIR,
    REPO_ROOT,
    PeerExited,
    ProcessPeer,
    arun_peer,
    find_binary,
    free_port,
    in_ci,
    loopback_env,
    missing_peer,
    node_modules_dir,
    require_binary,
    require_node_xds,
    run_peer,
    stop_process,
    wait_port,
    wait_port_sync,
)
from tests.peers.servers import (
    ahttp_get,
    close_server,
    http_get,
    http_post,
    start_echo_server,
    start_http_server,
    start_tls_echo_server,
)

__all__ = [
    "INSTALL_HINT",
    "LOOPBACK",
    "NODE_DIR",
    "NO_ADMIN",
    "REPO_ROOT",
    "TRUST_DOMAIN",
    "Envoy",
    "Etcd",
    "PeerExited",
    "ProcessPeer",
    "StatValue",
    "TestIdentity",
    "TestPKI",
    "ValidationResult",
    "ahttp_get",
    "arun_peer",
    "check_loopback",
    "close_server",
    "envoy_binary",
    "envoy_hbone_client_config",
    "envoy_hbone_server_config",
    "envoy_static_cluster",
    "envoy_tcp_proxy_config",
    "envoy_validate",
    "find_binary",
    "free_port",
    "http_get",
    "http_post",
    "in_ci",
    "loopback_env",
    "make_test_pki",
    "missing_peer",
    "node_modules_dir",
    "peer_uri_sans",
    "require_binary",
    "require_envoy",
    "require_node_xds",
    "run_peer",
    "spiffe_id_for",
    "start_echo_server",
    "start_http_server",
    "start_tls_echo_server",
    "stop_process",
    "wait_port",
    "wait_port_sync",
]
