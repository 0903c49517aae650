"""Composition root of `microxds serve`: config source -> debouncer -> caches -> xDS service -> listeners.

* Config: a watched file or directory (`sources.FileSource`); the first load must be valid, later invalid edits
  are logged with file:line and the last good config keeps being served.
* Caches: per-node-group snapshots (`SnapshotCache`, grouped by `--node-group-by`) for every type except the
  high-churn ones (`linear_types`: endpoints, addresses, workloads), which live in `LinearCache`s so an endpoint
  change costs O(changed) per client. Linear types are shared by all nodes, so a config that gives a group its own
  endpoints is rejected unless linear caching is turned off (`linear_types=()`).
* Listeners: plaintext h2c (`listen`, default 127.0.0.1:15010), TLS (`tls_listen`, server-auth, client
  certificates optional and verified when sent), HBONE mTLS (`hbone_listen`, caller SPIFFE id verified, same trust
  domain), all served by one `GrpcServer`; an optional metrics port (`metrics_listen`: Prometheus `/metrics`,
  `/ready`, and the `/debug/status` page, `/debug/syncz`, `/debug/config_dump?node=ID`; `microxds.server.debug`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from hbone.admin.http import Handler, HttpServer, Query, Response
from hbone.configtext import listen_host, parse_listen
from hbone.errors import ConfigError as HboneConfigError
from hbone.grpc.server import GrpcServer
from hbone.identity import FileSource as CertFileSource
from hbone.identity import IdentityManager
from hbone.identity.certs import CertificateAuthority
from hbone.net.settings import H2Settings
from hbone.tls import MeshTls, TlsOptions
from microxds.cache import (
    LinearCache,
    MetadataHash,
    MuxCache,
    NodeHash,
    Snapshot,
    SnapshotCache,
    node_cluster_hash,
    node_id_hash,
)
from microxds.errors import ConfigError
from microxds.etcd.client import EtcdClient, StoreURL
from microxds.istio.ca import MAX_TTL, register_ca
from microxds.resources import ADDRESS, ENDPOINT, WORKLOAD, Resource
from microxds.server.access import AccessPolicy, JwtVerifier
from microxds.server.debug import DebugViews
from microxds.server.heartbeat import Heartbeats, interval_for
from microxds.server.pushqueue import Debouncer, PushQueue, release_memory_after_bursts
from microxds.server.service import XdsService
from microxds.server.status import StatusRegistry, XdsMetrics
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.etcdsource import EtcdSource
from microxds.sources.files import FileSource

log = logging.getLogger("microxds.serve")

DEFAULT_LINEAR_TYPES = (ENDPOINT, ADDRESS, WORKLOAD)
MiB = 1 << 20


def parse_address(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (on `default_host`) or `[V6]:PORT`: `hbone.configtext.parse_listen`, as a bindable pair."""
    try:
        addr = parse_listen(text, default_host=default_host)
    except HboneConfigError as e:
        raise ConfigError(str(e)) from None
    return listen_host(addr), addr.port


def node_hash_from_spec(spec: str) -> NodeHash:
    """`id`, `cluster`, or `metadata:KEY[,KEY...]` -> a node hash (how nodes map to config groups)."""
    if spec == "id":
        return node_id_hash
    if spec == "cluster":
        return node_cluster_hash
    if spec.startswith("metadata:") and spec[9:]:
        return MetadataHash(*(k.strip() for k in spec[9:].split(",") if k.strip()))
    raise ConfigError(f"bad --node-group-by {spec!r}: use id, cluster or metadata:KEY[,KEY]")


@dataclass
class ServeOptions:
    config: Path | None
    listen: str | None = "127.0.0.1:15010"
    tls_listen: str | None = None
    hbone_listen: str | None = None
    certs: Path | None = None
    metrics_listen: str | None = None
    node_group_by: str = "id"
    access: AccessPolicy | None = None
    jwt: JwtVerifier | None = None
    linear_types: tuple[str, ...] = DEFAULT_LINEAR_TYPES
    quiet: float = 0.1
    max_delay: float = 1.0
    poll_interval: float = 0.2
    max_in_flight: int = 100
    streams_per_second: float = 200.0
    stream_burst: int = 200
    max_message_size: int = 64 * MiB
    # The HTTP/2 driver keeps one receive buffer per connection; 256 KiB suits tunnels, but an xDS server holds
    # thousands of mostly idle connections whose requests are small (an ACK is ~100 bytes, a 1,000-name
    # subscription ~10 KiB: a few reads). 4 KiB instead of 32 KiB also stops these long-lived buffers from
    # fragmenting the heap between the big transient buffers of an initial sync (measured: -200 KiB RSS/client).
    read_buffer_size: int = 4 * 1024
    # Return freed heap memory to the OS after push bursts (glibc only; see `release_memory_after_bursts`).
    release_memory: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)
    #: Dev CA (Istio CA API) served next to xDS; callers are identified on the HBONE mTLS listener.
    ca: CertificateAuthority | None = None
    ca_trusted_node_identities: tuple[str, ...] = ()
    ca_max_ttl: dt.timedelta = MAX_TTL
    #: Config from etcd instead of `config` (`--store etcd://...`), with its TLS context and credentials.
    store: StoreURL | None = None
    store_ssl: ssl.SSLContext | None = None
    store_user: str | None = None
    store_password: str | None = None


def min_ttl(snap: ConfigSnapshot) -> float | None:
    ttls = [
        r.ttl
        for view in (snap.resources, *snap.groups.values())
        for by_name in view.values()
        for r in by_name.values()
        if r.ttl is not None
    ]
    return min(ttls) if ttls else None


class ControlPlane:
    """One running control plane. `await start()`, then `await stop()`; `addresses` lists bound listeners."""

    def __init__(self, options: ServeOptions, *, prom_registry: CollectorRegistry | None = None) -> None:
        self.options = options
        self.prom = prom_registry or CollectorRegistry()
        self.node_hash = node_hash_from_spec(options.node_group_by)
        self.snapshots = SnapshotCache(self.node_hash)
        self.linear = {t: LinearCache(t) for t in options.linear_types}
        self.cache = MuxCache(self.snapshots, self.linear) if self.linear else self.snapshots
        self.registry = StatusRegistry(XdsMetrics(self.prom))
        self.heartbeats = Heartbeats()
        self.min_ttl: float | None = None  # the shortest resource TTL in the config (sets the heartbeat period)
        self.queue = PushQueue(
            max_in_flight=options.max_in_flight,
            streams_per_second=options.streams_per_second,
            stream_burst=options.stream_burst,
        )
        self.service = XdsService(
            self.cache,
            registry=self.registry,
            queue=self.queue,
            group_of=self.node_hash,
            access=options.access,
            jwt=options.jwt,
            heartbeats=self.heartbeats,
        )
        self.source: FileSource | EtcdSource
        if options.store is not None:
            client = EtcdClient(
                options.store.endpoints, ssl=options.store_ssl, user=options.store_user, password=options.store_password
            )
            self.source = EtcdSource(client, options.store.prefix)
        elif options.config is not None:
            self.source = FileSource(options.config, interval=options.poll_interval)
        else:
            raise ConfigError("serve needs a config path or a store")
        self.current: ConfigSnapshot | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_server: HttpServer | None = None
        self._identity: IdentityManager | None = None
        self._debouncer: Debouncer[ConfigSnapshot] | None = None
        self._grpc: GrpcServer | None = None
        self.reloads = Counter("microxds_config_reloads", "Config versions applied", registry=self.prom)
        self.rejects = Counter("microxds_config_rejected", "Config changes rejected", registry=self.prom)
        self.config_ok = Gauge(
            "microxds_config_last_reload_ok", "1 if the last config change applied", registry=self.prom
        )
        if isinstance(self.source, EtcdSource):
            source = self.source
            revision = Gauge(
                "microxds_config_store_revision", "etcd revision the store watch has reached", registry=self.prom
            )
            revision.set_function(lambda: float(source.revision))

    # -- config -> caches -----------------------------------------------------------------------------------------

    def apply(self, snap: ConfigSnapshot) -> None:
        """Install a validated config in the caches atomically (per group), or raise ConfigError."""
        linear = self.options.linear_types
        for group, view in snap.groups.items():
            for type_url in linear:
                own = {n: r.version for n, r in view.get(type_url, {}).items()}
                common = {n: r.version for n, r in snap.resources.get(type_url, {}).items()}
                if own != common:
                    kind = type_url.rsplit(".", 1)[-1]
                    raise ConfigError(
                        f"group {group!r} has its own {kind} resources, but {kind} is served from a shared linear "
                        "cache; move them to the common resources or serve with --no-linear"
                    )
        # Linear types first: a new cluster's endpoints are in place before CDS names them (make-before-break).
        for type_url, cache in self.linear.items():
            cache.set_resources(snap.resources.get(type_url, {}).values())
        self.snapshots.set_default(self._snapshot(snap.resources))
        for group, view in snap.groups.items():
            self.snapshots.set_snapshot(group, self._snapshot(view))
        for group in self.snapshots.groups():
            if group not in snap.groups:
                self.snapshots.clear_snapshot(group)
        self.current = snap
        self.min_ttl = min_ttl(snap)
        self.reloads.inc()
        self.config_ok.set(1)
        log.info("serving config version %s (%d resources, %d groups)", snap.version, snap.count(), len(snap.groups))

    def _snapshot(self, view: Mapping[str, Mapping[str, Resource]]) -> Snapshot:
        return Snapshot({t: named for t, named in view.items() if t not in self.linear})

    def _on_config(self, events: list[ConfigSnapshot]) -> None:
        try:
            self.apply(events[-1])  # debounced: only the newest config of a burst matters
        except ConfigError as exc:
            self._on_config_error(exc)

    def _on_config_error(self, exc: ConfigError) -> None:
        self.rejects.inc()
        self.config_ok.set(0)
        log.error("config change rejected, still serving %s: %s", self.current.version if self.current else "-", exc)

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def _initial_config(self) -> ConfigSnapshot:
        if isinstance(self.source, EtcdSource):
            return await self.source.initial()
        snap = await asyncio.to_thread(self.source.load_now)
        if snap is None:
            raise self.source.last_error or ConfigError("no configuration loaded", file=str(self.options.config))
        return snap

    async def start(self) -> None:
        self.apply(await self._initial_config())
        self._debouncer = Debouncer(self._on_config, quiet=self.options.quiet, max_delay=self.options.max_delay)
        self._tasks.append(asyncio.create_task(self.source.run(self._debouncer.trigger, self._on_config_error)))
        self._tasks.append(asyncio.create_task(self.heartbeats.run(lambda: interval_for(self.min_ttl))))
        if self.options.release_memory:
            self._tasks.append(asyncio.create_task(release_memory_after_bursts(self.queue)))
        await self._start_listeners()

    async def _start_listeners(self) -> None:
        opts = self.options
        grpc = GrpcServer(max_receive_message_size=opts.max_message_size, max_send_message_size=opts.max_message_size)
        self.service.register(grpc)
        if opts.ca is not None:
            register_ca(grpc, opts.ca, trusted_node_identities=opts.ca_trusted_node_identities, max_ttl=opts.ca_max_ttl)
        self._grpc = grpc
        mesh: MeshTls | None = None
        if opts.tls_listen or opts.hbone_listen:
            if opts.certs is None:
                raise ConfigError("--tls-listen and --hbone-listen need --certs DIR")
            self._identity = IdentityManager(CertFileSource(opts.certs))
            await self._identity.start()
            mesh = MeshTls(self._identity)
        h2 = H2Settings.server(read_buffer_size=opts.read_buffer_size)
        if opts.listen:
            host, port = parse_address(opts.listen, "127.0.0.1")
            self.addresses["plaintext"] = await grpc.listen(host, port, settings=h2)
        if opts.tls_listen and self._identity is not None:
            # Server-auth TLS for Envoy and gRPC clients: TLS 1.2 allowed (Envoy's upstream default maximum),
            # client certificates optional but verified when sent, so their SPIFFE id reaches the access rule.
            # MeshTls follows rotation: each handshake takes the context of the current certificate.
            server_tls = MeshTls(self._identity, TlsOptions(allow_tls12=True, require_client_cert=False))
            ctx = server_tls.server_context()
            host, port = parse_address(opts.tls_listen)
            self.addresses["tls"] = await grpc.listen(host, port, ssl_context=ctx, settings=h2)
        if opts.hbone_listen:
            host, port = parse_address(opts.hbone_listen)
            self.addresses["hbone"] = await grpc.listen(host, port, tls=mesh, settings=h2)
        if opts.metrics_listen:
            host, port = parse_address(opts.metrics_listen, "127.0.0.1")
            self._metrics_server = HttpServer(self.debug_routes(), name="metrics")
            self.addresses["metrics"] = await self._metrics_server.start(host, port, flag="--metrics-listen")
        for name, (host, port) in self.addresses.items():
            log.info("listening: %s on %s:%d", name, host, port)

    def ready(self) -> bool:
        return self.current is not None and bool(self.addresses)

    def debug_routes(self) -> dict[str, Handler]:
        """The --metrics-listen port: Prometheus, readiness and istiod-style debug views of connected proxies."""
        views = DebugViews(self.registry, self.node_hash)

        def metrics(_q: Query) -> Response:
            return Response(200, generate_latest(self.prom), CONTENT_TYPE_LATEST)

        def ready(_q: Query) -> Response:
            return Response.text("ready\n") if self.ready() else Response.text("not ready\n", 503)

        return {"/metrics": metrics, "/ready": ready, "/debug/syncz": views.syncz,
                "/debug/config_dump": views.config_dump, "/debug/status": views.status_page}  # fmt: skip

    async def stop(self, grace: float = 2.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._debouncer is not None:
            self._debouncer.close()
        if self._grpc is not None:
            await self._grpc.shutdown(grace)
            self._grpc = None
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self._identity is not None:
            await self._identity.stop()
        if isinstance(self.source, EtcdSource):
            await self.source.client.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
