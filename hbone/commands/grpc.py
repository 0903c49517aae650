"""`hbone grpc`: debugging tools for raw gRPC on the hbone stack.

- ``hbone grpc call ADDR /pkg.Svc/Method --data HEX|@FILE [--plaintext|--certs DIR|--tls-ca PEM]`` makes one call
  (unary or server-streaming: one request, any number of responses) and prints the response headers, each
  response message and the trailers. Exit status 0 for OK, 1 for any other gRPC status.
- ``hbone grpc decode FILE [--server] [--proto module.Class]`` decodes one captured direction of an HTTP/2
  connection into frames, headers and gRPC messages (`hbone.grpc.h2frames`; ``tools/h2dump.py`` is the same).
- ``hbone grpc sniff --listen PORT --upstream HOST:PORT`` is a TCP relay that decodes both directions live
  (h2c only: it sees bytes, so TLS traffic must be captured after decryption).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ssl
import sys
from pathlib import Path
from typing import Any

from hbone.configtext import DURATION, SIZE, host_port, listen_host, parse_listen, parse_target
from hbone.errors import ConfigError, GrpcError
from hbone.grpc.codec import ProtoCodec


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("grpc", help="gRPC debugging: make a call, decode a capture, sniff a connection")
    gsub = p.add_subparsers(dest="grpc_command", required=True, metavar="SUBCOMMAND")

    c = gsub.add_parser("call", help="make one gRPC call and print headers, messages and trailers")
    c.add_argument("address", help="host:port of the gRPC server")
    c.add_argument("method", help="/package.Service/Method")
    c.add_argument("--data", default="", help="request message as hex, or @FILE for raw bytes (default: empty)")
    c.add_argument("--json", metavar="JSON|@FILE", help="request as JSON (types: local protos or reflection)")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--plaintext", action="store_true", help="h2c, no TLS (the default without --certs/--tls-ca)")
    mode.add_argument("--certs", type=Path, metavar="DIR", help="mesh mTLS with the workload bundle in DIR")
    mode.add_argument("--tls-ca", type=Path, metavar="PEM", help="server-auth TLS trusting these roots (istiod)")
    c.add_argument("--expect-identity", action="append", default=[], metavar="SPIFFE_ID",
                   help="with --certs: accept only a server with this identity (repeatable)")  # fmt: skip
    c.add_argument("--authority", help=":authority to send (default ADDR; with --tls-ca also the TLS server name)")
    c.add_argument("--timeout", type=DURATION, help="deadline, e.g. 10s or 250ms (sent as grpc-timeout)")
    c.add_argument("-H", "--header", action="append", default=[], metavar="KEY:VALUE",
                   help="request metadata; a -bin key takes hex (repeatable)")  # fmt: skip
    c.add_argument("--gzip", action="store_true", help="compress the request with gzip")
    c.add_argument("--max-message-size", type=SIZE, default=64 * 1024 * 1024, help="bytes or 4MiB, ... (64MiB)")
    c.add_argument("--proto", metavar="MODULE.CLASS", help="protobuf class to print response messages with")
    c.set_defaults(func=cmd_call)

    h = gsub.add_parser("health", help="grpc.health.v1 Check: print the serving status (exit 0 when SERVING)")
    h.add_argument("address", help="host:port of the gRPC server")
    h.add_argument("--service", default="", help="service name ('' is the whole server)")
    hmode = h.add_mutually_exclusive_group()
    hmode.add_argument("--plaintext", action="store_true", help="h2c, no TLS (the default without --certs/--tls-ca)")
    hmode.add_argument("--certs", type=Path, metavar="DIR", help="mesh mTLS with the workload bundle in DIR")
    hmode.add_argument("--tls-ca", type=Path, metavar="PEM", help="server-auth TLS trusting these roots")
    h.add_argument("--expect-identity", action="append", default=[], metavar="SPIFFE_ID", help="with --certs")
    h.add_argument("--authority", help=":authority to send (default ADDR)")
    h.add_argument("--timeout", type=DURATION, default=10.0, help="deadline, e.g. 10s or 250ms (10s)")
    h.set_defaults(func=cmd_health)

    d = gsub.add_parser("decode", help="decode a captured HTTP/2 byte stream into frames and gRPC messages")
    d.add_argument("file", help="capture of one direction of an HTTP/2 connection, or - for stdin")
    d.add_argument("--server", action="store_true", help="bytes sent by the server (no connection preface)")
    d.add_argument("--proto", metavar="MODULE.CLASS", help="protobuf class to pretty-print gRPC messages with")
    d.add_argument("--hex-limit", type=int, default=64, help="bytes of each message shown in hex (0: all)")
    d.add_argument("--max-message-size", type=SIZE, default=64 * 1024 * 1024, help="bytes or 4MiB, ... (64MiB)")
    d.set_defaults(func=cmd_decode)

    s = gsub.add_parser("sniff", help="relay an h2c connection and print both directions decoded")
    s.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0 picks one)")
    s.add_argument("--upstream", required=True, help="host:port of the real server")
    s.add_argument("--hex-limit", type=int, default=64)
    s.set_defaults(func=cmd_sniff)


def load_class(path: str | None) -> Any:
    """``module.Class`` imported, or None."""
    if not path:
        return None
    module, _, name = path.rpartition(".")
    if not module:
        raise ConfigError(f"--proto needs module.Class, got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {path}: {exc}") from None


def parse_data(value: str) -> bytes:
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"--data must be hex or @FILE, got {value!r}") from None


def parse_headers(values: list[str]) -> list[tuple[str, str | bytes]]:
    out: list[tuple[str, str | bytes]] = []
    for item in values:
        key, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(f"-H needs KEY:VALUE, got {item!r}")
        key, value = key.strip().lower(), value.strip()
        out.append((key, bytes.fromhex(value) if key.endswith("-bin") else value))
    return out


def _show(data: bytes, cls: Any) -> str:
    if cls is not None:
        try:
            return "\n      = " + str(cls.FromString(data)).replace("\n", "\n        ")
        except Exception as exc:
            return f" (not a {cls.__name__}: {exc})"
    text = data.decode("utf-8", "replace")
    return f" {data.hex()}" + (f"  {text!r}" if text.isprintable() and data else "")


def cmd_call(args: argparse.Namespace) -> int:
    return asyncio.run(_call(args))


def _channel_kwargs(args: argparse.Namespace, max_message_size: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_receive_message_size": max_message_size, "authority": args.authority}
    if args.certs is not None:
        from hbone.identity import IdentityManager, load_bundle
        from hbone.tls import MeshTls

        kwargs["tls"] = MeshTls(IdentityManager.fixed(load_bundle(args.certs)))
        kwargs["expected_identities"] = args.expect_identity
    elif args.tls_ca is not None:
        ctx = ssl.create_default_context(cafile=str(args.tls_ca))
        ctx.set_alpn_protocols(["h2"])
        kwargs["ssl"] = ctx
    return kwargs


def _json_request(text: str, cls: Any, method: str) -> bytes:
    from google.protobuf import json_format

    if cls is None:
        raise ConfigError(f"--json: no message type for {method} (no local proto, no reflection on the server)")
    body = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return bytes(json_format.Parse(body, cls()).SerializeToString())
    except json_format.ParseError as exc:
        raise ConfigError(f"--json: not a {cls.DESCRIPTOR.full_name}: {exc}") from None


def _as_json(data: bytes, cls: Any) -> str:
    from google.protobuf import json_format

    try:
        text = str(json_format.MessageToJson(cls.FromString(data), indent=2))
        return "\n      = " + text.replace("\n", "\n        ")
    except Exception as exc:  # a message that does not match its declared type: show why, keep going
        return f" (not a {cls.DESCRIPTOR.full_name}: {exc})"


async def _call(args: argparse.Namespace) -> int:
    from hbone.grpc.client import Channel
    from hbone.grpc.resolve import method_types

    cls = load_class(args.proto)
    async with Channel(args.address, **_channel_kwargs(args, args.max_message_size)) as ch:
        types = None if cls is not None or args.data else await method_types(ch, args.method)
        request = (
            _json_request(args.json, types[0] if types else None, args.method) if args.json else parse_data(args.data)
        )
        call = ch.stream(args.method, timeout=args.timeout, metadata=parse_headers(args.header),
                         compression="gzip" if args.gzip else None)  # fmt: skip
        print(f"> {args.method} ({len(request)} bytes)")
        count = 0
        try:
            async with call:
                await call.send_last(request)
                while (reply := await call.recv()) is not None:
                    if count == 0:
                        _print_headers("< headers", call.raw_headers)
                    shown = _as_json(reply, types[1]) if types and cls is None else _show(reply, cls)
                    print(f"< message #{count}: {len(reply)} bytes{shown}")
                    count += 1
        except GrpcError:
            pass  # the status is printed below, with the trailers
        if count == 0:
            _print_headers("< headers", call.raw_headers)
        if call.raw_trailers is not None:
            _print_headers("< trailers", call.raw_trailers)
        status = call.status
        assert status is not None
        print(f"status: {status.code.name} ({int(status.code)})" + (f": {status.message}" if status.message else ""))
        for key, value in call.trailing_metadata or ():
            print(f"  trailing {key}: {value!r}" if isinstance(value, bytes) else f"  trailing {key}: {value}")
        return 0 if status.ok else 1


def cmd_health(args: argparse.Namespace) -> int:
    return asyncio.run(_health(args))


async def _health(args: argparse.Namespace) -> int:
    from hbone.grpc.client import Channel
    from hbone.grpc.health import CHECK, ServingStatus, health_messages

    request, response = health_messages()
    async with Channel(args.address, **_channel_kwargs(args, 1 << 20)) as ch:
        try:
            reply = await ch.unary(
                CHECK, request(service=args.service), timeout=args.timeout,
                request_codec=ProtoCodec(request), response_codec=ProtoCodec(response),
            )  # fmt: skip
        except GrpcError as exc:
            print(f"{args.address} {args.service or '(server)'}: {exc}")
            return 1
    status = ServingStatus(reply.status)
    print(f"{args.address} {args.service or '(server)'}: {status.name}")
    return 0 if status is ServingStatus.SERVING else 1


def _print_headers(title: str, headers: list[tuple[bytes, bytes]] | None) -> None:
    if headers is None:
        return
    print(title)
    for k, v in headers:
        print(f"    {k.decode('latin-1')}: {v.decode('latin-1')}")


def cmd_decode(args: argparse.Namespace) -> int:
    from hbone.grpc.h2frames import H2Decoder, format_record

    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    dec = H2Decoder(server=args.server, message_class=load_class(args.proto), max_message_size=args.max_message_size)
    records = dec.feed(data) + dec.close()
    for rec in records:
        for line in format_record(rec, hex_limit=args.hex_limit):
            print(line)
    return 1 if any(r.kind == "ERROR" for r in records) else 0


def cmd_sniff(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_sniff(args))
    except KeyboardInterrupt:
        return 0


async def _sniff(args: argparse.Namespace) -> int:
    from hbone.grpc.h2frames import H2Decoder, format_record

    up_host, up_port = host_port(parse_target(args.upstream, "--upstream"))
    listen = parse_listen(args.listen, default_host="127.0.0.1")
    host, port = listen_host(listen), listen.port
    conn_ids = iter(range(1, 1 << 30))

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, dec: H2Decoder, tag: str) -> None:
        try:
            while data := await src.read(65536):
                for rec in dec.feed(data):
                    for line in format_record(rec, hex_limit=args.hex_limit):
                        print(f"{tag} {line}", flush=True)
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except OSError:
            dst.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = next(conn_ids)
        try:
            up_r, up_w = await asyncio.open_connection(up_host, up_port)
        except OSError as exc:
            print(f"[{n}] cannot reach upstream {args.upstream}: {exc}", flush=True)
            writer.close()
            return
        await asyncio.gather(
            pump(reader, up_w, H2Decoder(server=False), f"[{n}] C>S"),
            pump(up_r, writer, H2Decoder(server=True), f"[{n}] S>C"),
        )
        up_w.close()
        writer.close()

    server = await asyncio.start_server(relay, host, port)
    addr = server.sockets[0].getsockname()
    print(f"sniffing on {addr[0]}:{addr[1]} -> {args.upstream}", flush=True)
    async with server:
        await server.serve_forever()
    return 0
