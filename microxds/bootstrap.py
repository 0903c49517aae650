"""Bootstrap documents for clients of a microxds server: Envoy (YAML/JSON) and proxyless gRPC (`GRPC_XDS_BOOTSTRAP`).

Pure functions from options to a dict. Envoy: one ADS stream (SotW `GRPC` or `DELTA_GRPC`) carrying CDS and LDS
(RDS/EDS follow from the resources), the xDS server as a static HTTP/2 cluster (STATIC for an IP, STRICT_DNS for a
name), optional TLS: server-auth (`ca`, as `serve --tls-listen` offers) or mutual (`certs`, as `--hbone-listen`
requires; TLS 1.3, ALPN h2, the server's SPIFFE id checked when given). gRPC: `xds_servers` with `insecure` or
`tls` channel credentials (the file-watcher certificate provider), `ignore_resource_deletion`, and the node.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbone.configtext import TextError, host_port, target_text
from microxds.errors import ConfigError
from microxds.server.app import parse_address

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Istio layout first, then the SPIFFE workload layout (both are read by `hbone.identity.load_bundle`).
LAYOUTS = (
    ("cert-chain.pem", "key.pem", "root-cert.pem"),
    ("certificates.pem", "private_key.pem", "ca_certificates.pem"),
)


@dataclass(frozen=True)
class BootstrapOptions:
    server: str  # HOST:PORT of the microxds listener
    node_id: str = "envoy-1"
    cluster: str = "microxds-clients"
    delta: bool = False
    ca: Path | None = None  # server-auth TLS: trust this CA bundle
    certs: Path | None = None  # mutual TLS: our certificate directory (its roots verify the server)
    server_identity: str | None = None  # the server's SPIFFE id (mutual TLS)
    admin: str | None = "127.0.0.1:9901"  # Envoy admin listener; None leaves it out

    def host_port(self) -> tuple[str, int]:
        try:
            return host_port(target_text(self.server))
        except TextError as e:
            raise ConfigError(f"bad --server {self.server!r}: {e}") from None


def cert_files(certs: Path) -> tuple[Path, Path, Path]:
    """(chain, key, roots) of a certificate directory in either layout."""
    for names in LAYOUTS:
        paths = tuple(certs / n for n in names)
        if all(p.is_file() for p in paths):
            return paths  # type: ignore[return-value]
    raise ConfigError(f"{certs}: no certificates ({' / '.join(', '.join(n) for n in LAYOUTS)})")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def envoy_bootstrap(opts: BootstrapOptions) -> dict[str, Any]:
    host, port = opts.host_port()
    cluster: dict[str, Any] = {
        "name": "xds_cluster",
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "xds_cluster",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    tls = _envoy_tls(opts, host)
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    ads = {"ads": {}, "resource_api_version": "V3"}
    doc: dict[str, Any] = {
        "node": {"id": opts.node_id, "cluster": opts.cluster},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if opts.delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": [cluster]},
    }
    if opts.admin:
        admin_host, admin_port = parse_address(opts.admin, "127.0.0.1")
        doc["admin"] = {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}}
    return doc


def _envoy_tls(opts: BootstrapOptions, host: str) -> dict[str, Any] | None:
    if opts.ca is None and opts.certs is None:
        return None
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
    }
    validation: dict[str, Any] = {}
    if opts.certs is not None:
        chain, key, roots = cert_files(opts.certs)
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": str(chain.resolve())}, "private_key": {"filename": str(key.resolve())}}
        ]
        validation["trusted_ca"] = {"filename": str((opts.ca or roots).resolve())}
        if opts.server_identity:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"exact": opts.server_identity}}
            ]
    else:
        assert opts.ca is not None
        validation["trusted_ca"] = {"filename": str(opts.ca.resolve())}
    common["validation_context"] = validation
    tls: dict[str, Any] = {"@type": TLS_TYPE, "common_tls_context": common}
    if opts.certs is None and not _is_ip(host):
        tls["sni"] = host  # server-auth TLS checks the name; mesh mTLS sends no SNI (ztunnel's rule)
    return tls


def grpc_bootstrap(opts: BootstrapOptions) -> dict[str, Any]:
    """gRPC's xDS bootstrap (gRFC A27; TLS by A29's file-watcher certificate provider)."""
    host, port = opts.host_port()
    server: dict[str, Any] = {
        "server_uri": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["ignore_resource_deletion"],
    }
    # grpc-js-xds needs `node.locality` (even empty) or it fails to resolve; C-core does not mind it.
    node = {"id": opts.node_id, "cluster": opts.cluster, "locality": {}}
    doc: dict[str, Any] = {"xds_servers": [server], "node": node}
    if opts.ca is not None or opts.certs is not None:
        config: dict[str, Any] = {"refresh_interval": "60s"}
        if opts.certs is not None:
            chain, key, roots = cert_files(opts.certs)
            config.update(certificate_file=str(chain.resolve()), private_key_file=str(key.resolve()))
            config["ca_certificate_file"] = str((opts.ca or roots).resolve())
        else:
            assert opts.ca is not None
            config["ca_certificate_file"] = str(opts.ca.resolve())
        server["channel_creds"] = [{"type": "tls", "config": config}]
    return doc
