#!/usr/bin/env python3
"""Decode a captured HTTP/2 byte stream (one direction) into frames, headers and gRPC messages.

    tools/h2dump.py FILE [--server] [--proto module.Class] [--hex-limit N]

FILE holds the bytes one peer sent ("-" reads stdin): the client's, starting with the connection preface, or with
--server the server's. Get them from a TLS keylog + Wireshark "Follow stream, raw", from `socat -x`, or from a test
that records `data_to_send()`. Exit status 1 when decoding hit an error. See hbone/grpc/h2frames.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from hbone.grpc.h2frames import H2Decoder, format_record


def load_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise SystemExit(f"--proto needs module.Class, got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("file", help="capture of one direction of an HTTP/2 connection, or - for stdin")
    ap.add_argument("--server", action="store_true", help="bytes sent by the server (no connection preface)")
    ap.add_argument("--proto", metavar="MODULE.CLASS", help="protobuf class to pretty-print gRPC messages with")
    ap.add_argument("--hex-limit", type=int, default=64, help="bytes of each message shown in hex (0: all)")
    ap.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024)
    args = ap.parse_args(argv)

    data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()  # noqa: SIM115
    cls = load_class(args.proto) if args.proto else None
    dec = H2Decoder(server=args.server, message_class=cls, max_message_size=args.max_message_size)
    records = dec.feed(data) + dec.close()
    for rec in records:
        for line in format_record(rec, hex_limit=args.hex_limit):
            print(line)
    return 1 if any(r.kind == "ERROR" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
