"""The HBONE TLS contexts' SSLObject (`hbone.tls.DirectSSLObject`): C methods on the data path, same behaviour."""

from __future__ import annotations

import ssl

import pytest

from hbone.testing import TestCA
from hbone.tls import DirectSSLObject, client_context, server_context


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def test_objects_use_the_c_methods_and_carry_data_both_ways() -> None:
    ca = TestCA()
    cli_ctx, srv_ctx = client_context(ca.issue("ns", "alice")), server_context(ca.issue("ns", "bob"))
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = cli_ctx.wrap_bio(bios[0], bios[1])
    server = srv_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    for obj in (client, server):
        assert isinstance(obj, DirectSSLObject)
        # the instance's own read/write/pending are the _ssl object's builtins, not ssl.SSLObject's functions
        assert all(
            type(vars(obj)[name]).__name__ == "builtin_function_or_method" for name in ("read", "write", "pending")
        )
    done = [False, False]
    for _ in range(10):  # a TLS 1.3 handshake over memory BIOs takes a few exchanges
        for i, obj in enumerate((client, server)):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        _pump(bios[1], bios[2])
        _pump(bios[3], bios[0])
        if all(done):
            break
    assert all(done)
    assert client.write(b"ping" * 256) == 1024
    _pump(bios[1], bios[2])
    buf = bytearray(4096)
    assert server.read(4096, buf) == 1024  # the (size, buffer) form uvloop uses
    assert bytes(buf[:1024]) == b"ping" * 256
    assert server.pending() == 0
    server.write(b"pong")
    _pump(bios[3], bios[0])
    assert client.read(100) == b"pong"  # the (size) form asyncio uses
    with pytest.raises(ssl.SSLWantReadError):
        client.read(100)
    assert client.version() == "TLSv1.3"  # the rest is ssl.SSLObject's
