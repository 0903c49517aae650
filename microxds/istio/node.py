"""The istiod profile of an agent: node id and metadata, per-call headers, control-plane addresses and roots.

Reference §2 ("Endpoint", "TLS", "Headers on every gRPC call", "Node"): node id
`ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`; metadata NAME, NAMESPACE,
INSTANCE_IPS, NODE_NAME plus every `ISTIO_META_<K>` (as `<K>`) and `ISTIO_METAJSON_<K>` (parsed); on every call
`authorization: Bearer <token>` read from the token file afresh (projected tokens rotate), `clusterid`, and any
`XDS_HEADER_<K>` / `CA_HEADER_<K>`. `XDS_ADDRESS`, `CA_ADDRESS`, `XDS_ROOT_CA`, `CA_ROOT_CA` (path or `SYSTEM`).
Everything is read from a mapping (the environment by default) when `from_env` is called, never at import.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from microxds.errors import ConfigError

DEFAULT_XDS_ADDRESS = "istiod.istio-system.svc:15012"
DEFAULT_ROOT_CA = "./var/run/secrets/istio/root-cert.pem"
DEFAULT_TOKEN_PATH = "./var/run/secrets/tokens/istio-token"
DEFAULT_CLUSTER_ID = "Kubernetes"
DEFAULT_INSTANCE_IP = "1.1.1.1"
SYSTEM_ROOTS = "SYSTEM"

MetadataProvider = Callable[[], Awaitable[Sequence[tuple[str, str]]]]


def _prefixed(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in env.items() if k.startswith(prefix) and len(k) > len(prefix)}


@dataclass(frozen=True)
class NodeProfile:
    """Everything that identifies this agent to istiod (or microxds) and how it reaches the control plane."""

    instance_ip: str = DEFAULT_INSTANCE_IP
    pod_name: str = "ztunnel"
    pod_namespace: str = "istio-system"
    node_name: str = ""
    cluster_id: str = DEFAULT_CLUSTER_ID
    istio_version: str = "1.31.0"
    xds_address: str = DEFAULT_XDS_ADDRESS
    ca_address: str = DEFAULT_XDS_ADDRESS
    xds_root_ca: str = DEFAULT_ROOT_CA
    ca_root_ca: str = DEFAULT_ROOT_CA
    alt_xds_hostname: str = ""
    alt_ca_hostname: str = ""
    token_path: str | None = DEFAULT_TOKEN_PATH  # None: no token (mTLS-authenticated control plane)
    token_value: str | None = None  # AUTH_TOKEN given literally
    on_demand: bool = False
    extra_metadata: Mapping[str, object] = field(default_factory=dict)
    xds_headers: Mapping[str, str] = field(default_factory=dict)
    ca_headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodeProfile:
        e = dict(os.environ if env is None else env)
        meta: dict[str, object] = dict(_prefixed(e, "ISTIO_META_"))
        for key, raw in _prefixed(e, "ISTIO_METAJSON_").items():
            try:
                meta[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"ISTIO_METAJSON_{key} is not JSON: {exc}") from None
        token = e.get("AUTH_TOKEN")
        token_path: str | None = DEFAULT_TOKEN_PATH
        token_value: str | None = None
        if token:
            # AUTH_TOKEN names a file when one exists there, otherwise it is the token itself.
            token_path, token_value = (token, None) if Path(token).is_file() else (None, token)
        xds = e.get("XDS_ADDRESS", DEFAULT_XDS_ADDRESS)
        root = e.get("XDS_ROOT_CA", DEFAULT_ROOT_CA)
        return cls(
            instance_ip=e.get("INSTANCE_IP", DEFAULT_INSTANCE_IP),
            pod_name=e.get("POD_NAME", "ztunnel"),
            pod_namespace=e.get("POD_NAMESPACE", "istio-system"),
            node_name=e.get("NODE_NAME", ""),
            cluster_id=e.get("ISTIO_META_CLUSTER_ID") or e.get("CLUSTER_ID") or DEFAULT_CLUSTER_ID,
            istio_version=e.get("ISTIO_META_ISTIO_VERSION", "1.31.0"),
            xds_address=xds,
            ca_address=e.get("CA_ADDRESS", xds),
            xds_root_ca=root,
            ca_root_ca=e.get("CA_ROOT_CA", root),
            alt_xds_hostname=e.get("ALT_XDS_HOSTNAME", ""),
            alt_ca_hostname=e.get("ALT_CA_HOSTNAME", ""),
            token_path=token_path,
            token_value=token_value,
            on_demand=e.get("XDS_ON_DEMAND", "").lower() in ("1", "true", "yes"),
            extra_metadata=meta,
            xds_headers=_prefixed(e, "XDS_HEADER_"),
            ca_headers=_prefixed(e, "CA_HEADER_"),
        )

    # -- node -------------------------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        ns = self.pod_namespace
        return f"ztunnel~{self.instance_ip}~{self.pod_name}.{ns}~{ns}.svc.cluster.local"

    def metadata(self) -> dict[str, object]:
        meta: dict[str, object] = {
            "NAME": self.pod_name,
            "NAMESPACE": self.pod_namespace,
            "INSTANCE_IPS": self.instance_ip,
            "NODE_NAME": self.node_name,
            "CLUSTER_ID": self.cluster_id,
            "ISTIO_VERSION": self.istio_version,  # istiod warns when it is missing
        }
        meta.update(self.extra_metadata)
        return meta

    def node(self) -> base_pb2.Node:
        md = struct_pb2.Struct()
        md.update(self.metadata())
        return base_pb2.Node(id=self.node_id, cluster=self.cluster_id, metadata=md)

    # -- per-call headers -------------------------------------------------------------------------------------

    def read_token(self) -> str | None:
        """The bearer token as of now: re-read from the file on every call (tokens rotate, 12 h expiry)."""
        if self.token_value is not None:
            return self.token_value
        if self.token_path is None:
            return None
        try:
            return Path(self.token_path).read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.token_path}: {exc}") from None

    def headers(self, *, ca: bool = False) -> list[tuple[str, str]]:
        out = [("clusterid", self.cluster_id)]
        token = self.read_token()
        if token:
            out.append(("authorization", f"Bearer {token}"))
        extra = self.ca_headers if ca else self.xds_headers
        out += [(k.lower().replace("_", "-"), v) for k, v in extra.items()]
        return out

    def metadata_provider(self, *, ca: bool = False) -> MetadataProvider:
        """For `Channel(metadata_provider=...)`: the headers, token included, computed per call."""

        async def provide() -> Sequence[tuple[str, str]]:
            return await asyncio.to_thread(self.headers, ca=ca)

        return provide

    # -- control-plane TLS ------------------------------------------------------------------------------------

    def ssl_context(self, *, ca: bool = False) -> ssl.SSLContext:
        """Server-auth TLS to istiod (no client certificate; callers authenticate by token)."""
        roots = self.ca_root_ca if ca else self.xds_root_ca
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["h2"])
        if roots != SYSTEM_ROOTS:
            try:
                ctx.load_verify_locations(cafile=roots)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load control-plane roots {roots}: {exc}") from None
        return ctx

    def authority(self, *, ca: bool = False) -> str | None:
        """The name to verify the control plane by, when ALT_XDS_HOSTNAME / ALT_CA_HOSTNAME override it."""
        alt = self.alt_ca_hostname if ca else self.alt_xds_hostname
        return alt or None
