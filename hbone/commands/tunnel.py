"""`hbone serve`, `hbone connect`, `hbone forward`, `hbone probe`: inbound HBONE and simple outbound tunnels."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from hbone import limits
from hbone.admin.dump import plain
from hbone.admin.options import AdminOptions
from hbone.admin.options import add_flags as add_admin_flags
from hbone.admin.service import DaemonView, Observability, loaded
from hbone.authz.defaults import DefaultMode
from hbone.client import Endpoint, HboneClient, Tunnel
from hbone.commands import probe
from hbone.commands.runtime import add_listener_flags, apply_listener_flags, stop_on_signals, tunnel_idle_timeout
from hbone.commands.stdio import Stdio
from hbone.config import ServeConfig, load_serve_config
from hbone.configtext import parse_listen
from hbone.errors import ConfigError, HboneError
from hbone.grpc.server import GrpcServer
from hbone.identity.bundle import load_bundle
from hbone.identity.manager import FileSource, IdentityManager
from hbone.net.relay import AcceptedPipe, RelayResult, TcpEnd, relay
from hbone.net.stream import Stream
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.inbound import InboundConfig, InboundHandler, policy_authorizer
from hbone.proxy.listener import ConnectionGate, start_admitting_listener, start_listener
from hbone.proxy.responders import TcpResponder
from hbone.server import HboneServer
from hbone.tls import MeshTls
from hbone.wire.authority import parse_authority


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run an inbound HBONE server (ztunnel's :15008)")
    serve.add_argument("--certs", type=Path, help="certificate directory (Istio or SPIFFE layout)")
    serve.add_argument("--listen", help="mTLS HBONE address (default 0.0.0.0:15008)")
    serve.add_argument("--h2c-listen", help="plaintext HBONE address (off by default; trusted networks only)")
    serve.add_argument("--config", type=Path, help="YAML config (see README); flags override it")
    serve.add_argument("--authz", choices=[m.value for m in DefaultMode], help="authorization mode")
    add_admin_flags(serve)
    serve.set_defaults(func=cmd_serve)

    def outbound(p: argparse.ArgumentParser) -> None:
        p.add_argument("--via", required=True, help="HBONE server HOST:PORT")
        p.add_argument("--certs", type=Path, help="our certificate directory (omit with --plaintext)")
        p.add_argument("--plaintext", action="store_true", help="h2c instead of mTLS")
        p.add_argument(
            "--expect-identity",
            action="append",
            default=[],
            help="the HBONE server's SPIFFE id (required with --certs; repeatable)",
        )
        p.add_argument("--post", action="store_true", help="POST + x-tun instead of CONNECT")
        p.add_argument("--inner-tls", action="store_true", help="with --post: mTLS end to end inside the stream")

    connect = sub.add_parser("connect", help="tunnel stdin/stdout to TARGET (usable as an ssh ProxyCommand)")
    connect.add_argument("target", help="HOST:PORT as the HBONE server should reach it")
    outbound(connect)
    connect.set_defaults(func=cmd_connect)

    forward = sub.add_parser("forward", help="forward a local port to TARGET through HBONE")
    forward.add_argument("--listen", required=True, help="local HOST:PORT")
    forward.add_argument("--target", required=True)
    outbound(forward)
    add_admin_flags(forward)
    add_listener_flags(forward)
    forward.set_defaults(func=cmd_forward)

    probe.register(sub)


def _client(args: argparse.Namespace) -> tuple[HboneClient, Endpoint]:
    if args.plaintext:
        tls = None
    elif args.certs is None:
        raise ConfigError("--certs DIR is required unless --plaintext is given")
    elif not args.expect_identity:  # an empty list would accept any workload as the HBONE server
        raise ConfigError("--expect-identity SPIFFE_ID is required with --certs: the HBONE server's identity")
    else:
        tls = MeshTls(IdentityManager.fixed(load_bundle(args.certs)))
    ep = Endpoint.parse(
        getattr(args, "via", None) or args.address,
        identities=args.expect_identity,
        post=args.post,
        inner_tls=getattr(args, "inner_tls", False),
    )
    return HboneClient(tls), ep


# --- serve ---------------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_serve_config(args.config) if args.config else ServeConfig()
    if args.certs:
        cfg.certs = args.certs
    if args.listen is not None:
        cfg.listen = parse_listen(args.listen) if args.listen != "none" else None
    if args.h2c_listen:
        cfg.h2c_listen = parse_listen(args.h2c_listen)
    if args.authz:
        cfg.mode = DefaultMode.parse(args.authz)
    return asyncio.run(serve(cfg, admin=AdminOptions.resolve(args, cfg.admin_ports)))


async def serve(cfg: ServeConfig, ready: asyncio.Event | None = None, admin: AdminOptions | None = None) -> int:
    manager: IdentityManager | None = None
    tls: MeshTls | None = None
    if cfg.listen is not None:
        if cfg.certs is None:
            raise ConfigError("an mTLS listener needs --certs DIR (or listen: null and h2c_listen only)")
        manager = IdentityManager(FileSource(cfg.certs))
        await manager.start()
        tls = MeshTls(manager)
    identity = manager.identity if manager else None
    policies = cfg.effective_policies(identity)
    inbound = InboundHandler(
        InboundConfig(
            authorize=policy_authorizer(policies),
            dial_timeout=cfg.dial_timeout,
            idle_timeout=cfg.tunnel_idle_timeout,
            namespace=(identity.namespace or "") if identity else "",
            tls=tls,
        )
    )
    lim = cfg.limits
    limits.configure(
        tunnels=lim.max_tunnels,
        pending_dials=lim.max_pending_dials,
        grpc_connection_bytes=lim.grpc_connection_bytes,
        grpc_process_bytes=lim.grpc_process_bytes,
    )
    server = HboneServer(
        tls,
        inbound,
        settings=cfg.h2,
        grpc=_grpc_app(),
        max_connections=lim.max_connections,
        handshake_timeout=lim.handshake_timeout,
    )
    addrs: list[str] = []
    obs = Observability(
        admin or AdminOptions.off(),
        DaemonView(
            certificates=lambda: loaded(manager),
            config=lambda: {
                "listeners": addrs,
                "authorization": {**cfg.authz_summary(identity), "rules": plain(policies)},
                "http2": plain(cfg.h2),
                "limits": plain(lim),
            },
            not_ready=lambda: None if addrs and (manager is None or loaded(manager)) else "starting",
        ),
    )
    await obs.start()
    if cfg.listen is not None:
        h, p = await server.listen(cfg.listen.host if cfg.listen.ip is None else str(cfg.listen.ip), cfg.listen.port)
        addrs.append(f"mtls={h}:{p}")
    if cfg.h2c_listen is not None:
        a = cfg.h2c_listen
        h, p = await server.listen(a.host if a.ip is None else str(a.ip), a.port, plaintext=True)
        addrs.append(f"h2c={h}:{p}")
    if not addrs:
        await obs.stop()
        raise ConfigError("nothing to listen on: set listen and/or h2c_listen")
    authz = cfg.authz_summary(identity)
    print(
        f"hbone serve: listening {' '.join(addrs)} identity={identity} authz={authz['mode']}"
        f" policies={','.join(authz['policies']) or '-'}",
        file=sys.stderr,
        flush=True,
    )
    for line in obs.describe():
        print(f"hbone serve: {line}", file=sys.stderr, flush=True)
    stop = stop_on_signals()
    if ready is not None:
        ready.set()
    await stop.wait()
    print("hbone serve: draining", file=sys.stderr, flush=True)
    _enter_drain(server)
    await server.drain(cfg.drain_timeout)
    await server.close()
    await obs.stop()
    if manager is not None:
        await manager.stop()
    return 0


def _grpc_app() -> GrpcServer:
    """The gRPC side of every listener: grpc.health.v1.Health, SERVING while we accept traffic."""
    return GrpcServer()


def _enter_drain(server: HboneServer) -> None:
    # Health flips to NOT_SERVING (Watch streams see it) before GOAWAY goes out.
    if isinstance(server.grpc, GrpcServer):
        server.grpc.health.enter_graceful_shutdown()


# --- connect / forward ---------------------------------------------------------------------------------------------


def cmd_connect(args: argparse.Namespace) -> int:
    return asyncio.run(_connect(args))


async def _connect(args: argparse.Namespace) -> int:
    client, ep = _client(args)
    try:
        tunnel = await client.open(args.target, ep)
        stdio = await Stdio.open()  # pipes, sockets, terminals or regular files (`< file`, `> file`)
        result = await relay(TcpEnd(stdio.reader, stdio.writer), tunnel.stream, idle_timeout=None)
        await stdio.finish()
        return 0 if result.error is None else 1
    finally:
        await client.close()


def cmd_forward(args: argparse.Namespace) -> int:
    apply_listener_flags(args)
    return asyncio.run(_forward(args))


async def _forward(args: argparse.Namespace) -> int:
    client, ep = _client(args)
    admin = AdminOptions.resolve(args)
    listen = parse_listen(args.listen)
    parse_authority(args.target)
    idle_timeout = tunnel_idle_timeout(args)

    async def open_tunnel(guard: TunnelGuard) -> Tunnel:
        """One tunnel per accepted connection, with its access record (metrics and /connections)."""
        try:
            tunnel = await client.open(args.target, ep)
        except BaseException as e:
            guard.fail(e)  # the record says why; the client connection is dropped (nothing to answer in TCP)
            raise
        guard.answered(tunnel.status)
        guard.record.dst_identity = str(tunnel.peer_identity) if tunnel.peer_identity else None
        guard.established(tunnel.h2, inbound=False)
        return tunnel

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = AccessRecord("forward", mode=ep.mode.value, src_addr=_peer(writer.transport), dst_addr=args.target)
        with TunnelGuard(record, TcpResponder(writer)) as guard:
            try:
                tunnel = await open_tunnel(guard)
            except HboneError as e:
                print(f"hbone forward: {e}", file=sys.stderr)
                raise
            result = await relay(TcpEnd(reader, writer), tunnel.stream, idle_timeout=idle_timeout)
            guard.relayed(result)

    def accepted(gate: ConnectionGate) -> AcceptedPipe:
        guard = TunnelGuard(AccessRecord("forward", mode=ep.mode.value, dst_addr=args.target))
        pipe: AcceptedPipe | None = None

        async def open_stream() -> Stream:
            # The pipe holds this closure: drop our reference to it, or every connection's whole graph (pipe,
            # stream, transport, record) is a reference cycle that only the cycle collector frees (~28 objects
            # per tunnel, most of the collector's work in `hbone forward`).
            nonlocal pipe
            me, pipe = pipe, None
            assert me is not None
            guard.record.src_addr = _peer(me.transport)
            stream = (await open_tunnel(guard)).h2
            me.done.add_done_callback(lambda done: _finish(guard, done))
            return stream

        made = pipe = AcceptedPipe(open_stream, tasks, failed, idle_timeout=idle_timeout, loop=loop, gate=gate)
        return made

    def failed(exc: BaseException) -> None:
        print(f"hbone forward: {exc}", file=sys.stderr)

    host = str(listen.ip) if listen.ip else listen.host
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    # Both paths admit connections through a ConnectionGate: the front ends' per-listener cap and a tunnel slot each.
    if ep.inner_tls:  # the stream carries TLS records: the task relay carries the plaintext of a TlsStream
        server = await start_listener(handle, host, listen.port)
    else:  # callback path: each chunk is relayed in the callback that received it (1 KiB round trip, RESULTS)
        server = await start_admitting_listener(accepted, host, listen.port)
    port = server.sockets[0].getsockname()[1]
    certs = client.tls.manager.current if client.tls is not None else None
    obs = Observability(
        admin,
        DaemonView(
            certificates=lambda: [certs] if certs is not None else [],
            config=lambda: {
                "listeners": [{"listen": f"{listen.host}:{port}", "target": args.target}],
                "routes": [{"via": f"{ep.host}:{ep.port}", "identities": list(ep.identities), "mode": ep.mode.value}],
            },
        ),
    )
    try:
        await obs.start()
    except BaseException:
        server.close()
        await client.close()
        raise
    print(
        f"hbone forward: listening {listen.host}:{port} -> {args.target} via {ep.host}:{ep.port}",
        file=sys.stderr,
        flush=True,
    )
    for line in obs.describe():
        print(f"hbone forward: {line}", file=sys.stderr, flush=True)
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        await obs.stop()
        server.close()
        for task in list(tasks):
            task.cancel()
        await client.close()
    return 0


def _peer(transport: Any) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else None


def _finish(guard: TunnelGuard, done: asyncio.Future[RelayResult]) -> None:
    """Finish the access record of a connection relayed on the callback path from its relay result."""
    if done.cancelled() or done.exception() is not None:
        guard.fail(done.exception() or asyncio.CancelledError())
        return
    result = done.result()
    guard.relayed(result)
