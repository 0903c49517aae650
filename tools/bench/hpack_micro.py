"""HPACK encoder microbenchmark: CPU per encoded header block and bytes per block, in-process.

    .venv/bin/python tools/bench/hpack_micro.py [--blocks N] [--repeats N] [--old FILE]

Encodes the header blocks a connection sends, one connection's encoder per run, then decodes them as the peer
would (our decoder), and reports the median CPU µs per block of each over `--repeats` alternate runs, and the
bytes per block once the connection is warm (mean over the run):

- connect: ztunnel's CONNECT request (`:authority`, a W3C traceparent new on every request, baggage), one
  destination: what an `hbone forward` client sends per tunnel to one service.
- connect-1000: the same request to 1,000 destinations in turn: every `:authority` is new to the dynamic table
  again by the time it comes back (the worst case for indexing: an insertion and an eviction per block).
- grpc: a unary gRPC call's request block (`grpc-timeout` differs per call) on one connection.
- status: `:status 200`, a tunnel's answer (one static-table byte either way).

Encoders: `native` (our encoder, `hbone.net.h2.native_hpack`), `native-noindex` (the same with a dynamic table of
size 0, i.e. static table and literals only: what the native engine did before it indexed), `hpack` (the `hpack`
library's encoder, which the h2 engine uses; no Huffman, as our settings). `--old FILE` adds the `HeaderCodec` of
an older copy of native_hpack.py (`git show REV:hbone/net/h2/native_hpack.py > FILE`) as a further column.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import hpack

from hbone.net.h2.native_hpack import HeaderCodec

Block = list[tuple[bytes, bytes]]
BAGGAGE = b"k8s.namespace.name=default,k8s.pod.name=client-7d4b9c-abcde,service.name=client"


def _traceparent(i: int) -> bytes:
    return b"00-%032x-%016x-01" % (i * 2654435761, i)


def connect(destinations: int) -> Callable[[int], Block]:
    def block(i: int) -> Block:
        authority = b"10.0.%d.%d:8080" % (i % destinations // 250, i % destinations % 250)
        return [
            (b":method", b"CONNECT"),
            (b":authority", authority),
            (b"traceparent", _traceparent(i)),
            (b"baggage", BAGGAGE),
        ]

    return block


def grpc(i: int) -> Block:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/istio.v1.auth.IstioCertificateService/CreateCertificate"),
        (b":authority", b"istiod.istio-system.svc:15012"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"%dm" % (10_000 - i % 97)),
        (b"user-agent", b"grpc-python/1.0"),
    ]


def status(i: int) -> Block:
    return [(b":status", b"200")]


CASES: dict[str, Callable[[int], Block]] = {
    "connect": connect(1),
    "connect-1000": connect(1000),
    "grpc": grpc,
    "status": status,
}


def native(noindex: bool = False, codec_class: type = HeaderCodec) -> Callable[[Block], bytes]:
    codec = codec_class(1 << 20, False)
    if noindex:
        codec.set_encoder_table_size(0)
    encode: Callable[[Block], bytes] = codec.encode
    return encode


def stock() -> Callable[[Block], bytes]:
    encoder = hpack.Encoder()
    return lambda block: encoder.encode(block, huffman=False)


def run(
    make: Callable[[], Callable[[Block], bytes]], case: Callable[[int], Block], blocks: int
) -> tuple[float, float, float]:
    """CPU µs per block to encode, CPU µs per block for the peer (our decoder) to decode, and warm bytes per
    block (the first 2,000 blocks are not counted in the bytes)."""
    inputs = [case(i) for i in range(blocks)]  # built beforehand: only encoding is timed
    encode = make()
    cpu = time.process_time()
    outputs = [encode(block) for block in inputs]
    encoding = time.process_time() - cpu
    decode = HeaderCodec(1 << 20, False).decode
    cpu = time.process_time()
    for data in outputs:
        decode(data)
    decoding = time.process_time() - cpu
    warm = outputs[2000:] or outputs
    return encoding / blocks * 1e6, decoding / blocks * 1e6, sum(map(len, warm)) / len(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=50_000, help="blocks per run (default 50,000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old", help="an older native_hpack.py to compare as a further column")
    args = parser.parse_args()
    encoders: dict[str, Callable[[], Callable[[Block], bytes]]] = {
        "native": native,
        "native-noindex": lambda: native(noindex=True),
        "hpack": stock,
    }
    if args.old:
        spec = importlib.util.spec_from_file_location("old_native_hpack", args.old)
        assert spec is not None and spec.loader is not None, args.old
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        encoders["old"] = lambda: native(codec_class=old.HeaderCodec)
    print(f"HPACK encoders, {args.blocks} blocks per run, median of {args.repeats} alternate runs\n")
    print("| case | " + " | ".join(f"{name}: encode · decode µs, bytes" for name in encoders) + " |")
    print("|---|" + "---:|" * len(encoders))
    for case_name, case in CASES.items():
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in encoders}
        for _ in range(args.repeats):
            for name, make in encoders.items():
                runs[name].append(run(make, case, args.blocks))
        cells = [
            f"{statistics.median(r[0] for r in results):.2f} · {statistics.median(r[1] for r in results):.2f}, "
            f"{results[0][2]:.0f}"
            for results in runs.values()
        ]
        print(f"| {case_name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
