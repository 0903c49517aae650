"""Envoy bootstrap builders (static clusters, tcp_proxy, HBONE server and client). Shared with the HBONE tests;
they follow docs/interop.md."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.peers.process import LOOPBACK

_TLS = "envoy.transport_sockets.tls"
_TYPES = "type.googleapis.com/envoy.extensions"


def _address(port: int, host: str = LOOPBACK) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def envoy_static_cluster(name: str, port: int, host: str = LOOPBACK, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port, host)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def envoy_tcp_proxy_config(upstream_port: int, *, listen_port: int = 0, cluster: str = "echo") -> dict[str, Any]:
    """Plain tcp_proxy listener ``tcp_in`` to a STATIC cluster on 127.0.0.1:``upstream_port``."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "tcp_in",
                "address": _address(listen_port),
                "stat_prefix": "tcp_in",  # listener.tcp_in.*, not listener.127.0.0.1_0.*
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": f"{_TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "tcp_in",
                        "cluster": cluster,
                    },
                }]}],
            }],
            "clusters": [envoy_static_cluster(cluster, upstream_port)],
        }
    }  # fmt: skip


def _common_tls(cert_chain: Path, key: Path, root_cert: Path, san_matcher: dict[str, str]) -> dict[str, Any]:
    return {
        # Both bounds: Envoy's upstream default maximum is TLS 1.2, so min alone fails with
        # NO_SUPPORTED_VERSIONS_ENABLED (recipes gotcha).
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["h2"],
        "tls_certificates": [{
            "certificate_chain": {"filename": os.fspath(cert_chain)},
            "private_key": {"filename": os.fspath(key)},
        }],
        "validation_context": {
            "trusted_ca": {"filename": os.fspath(root_cert)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san_matcher}],
        },
    }  # fmt: skip


def envoy_hbone_server_config(
    *,
    cert_chain: Path,
    key: Path,
    root_cert: Path,
    listen_port: int = 0,
    san_prefix: str = "spiffe://cluster.local/",
    listener_name: str = "hbone_in",
    cluster_name: str = "orig_dst",
) -> dict[str, Any]:
    """Envoy as an HBONE server like ztunnel :15008: mTLS 1.3 + h2, CONNECT to the ``:authority`` host:port."""
    hcm = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": listener_name,
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
        }],
        "route_config": {
            "name": listener_name,
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{
                    "match": {"connect_matcher": {}},
                    "route": {
                        "cluster": cluster_name,
                        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                    },
                }],
            }],
        },
    }  # fmt: skip
    tls = {
        "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(cert_chain, key, root_cert, {"prefix": san_prefix}),
    }
    return {
        "static_resources": {
            "listeners": [{
                "name": listener_name,
                "address": _address(listen_port),
                "stat_prefix": listener_name,  # listener.<name>.*, not listener.127.0.0.1_0.*
                "filter_chains": [{
                    "transport_socket": {"name": _TLS, "typed_config": tls},
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
                }],
            }],
            "clusters": [{
                "name": cluster_name,
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "5s",
                "original_dst_lb_config": {"use_http_header": True, "http_header_name": ":authority"},
            }],
        }
    }  # fmt: skip


def envoy_hbone_client_config(
    *,
    target: str,
    hbone_port: int,
    cert_chain: Path,
    key: Path,
    root_cert: Path,
    peer_san: str,
    listen_port: int = 0,
    hbone_host: str = LOOPBACK,
    listener_name: str = "hbone_out",
    cluster_name: str = "hbone_upstream",
) -> dict[str, Any]:
    """Envoy as an HBONE client: tcp_proxy tunnels each TCP connection as CONNECT ``target`` ("ip:port").

    The upstream is ``hbone_host:hbone_port`` over mTLS 1.3 + h2, and its URI SAN must equal ``peer_san``.
    """
    cluster = envoy_static_cluster(cluster_name, hbone_port, hbone_host, http2=True)
    cluster["transport_socket"] = {
        "name": _TLS,
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _common_tls(cert_chain, key, root_cert, {"exact": peer_san}),
        },
    }
    return {
        "static_resources": {
            "listeners": [{
                "name": listener_name,
                "address": _address(listen_port),
                "stat_prefix": listener_name,  # listener.<name>.*, not listener.127.0.0.1_0.*
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": f"{_TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": listener_name,
                        "cluster": cluster_name,
                        "tunneling_config": {"hostname": target},
                    },
                }]}],
            }],
            "clusters": [cluster],
        }
    }  # fmt: skip
