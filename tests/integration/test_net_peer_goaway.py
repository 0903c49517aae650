"""What our HTTP/2 server does with frames a peer writes after its own GOAWAY, over real loopback sockets.

Closing a socket that still has unread input makes the kernel answer with a reset, which destroys what we had
written but the peer had not read yet (h2spec generic/3.8 and http2/7 failed intermittently that way). The
client here writes its frames in separate system calls, so the server may read the GOAWAY alone first.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.peers import LOOPBACK, close_server
from tests.peers.h2app import start_h2_app

pytestmark = pytest.mark.timeout(30)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
OPAQUE = b"goaway!!"


def frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + b"\0\0\0\0" + payload


def goaway(code: int) -> bytes:
    return frame(GOAWAY, 0, struct.pack(">II", 0, code))


def read_frames(sock: socket.socket) -> tuple[list[tuple[int, int, bytes]], BaseException | None]:
    """Every frame until EOF, and the error that ended reading early (a reset), if any."""
    buf = b""
    frames: list[tuple[int, int, bytes]] = []
    try:
        while chunk := sock.recv(65536):
            buf += chunk
    except OSError as e:
        return frames, e
    finally:
        while len(buf) >= 9:
            size = int.from_bytes(buf[:3], "big")
            frames.append((buf[3], buf[4], buf[9 : 9 + size]))
            buf = buf[9 + size :]
    return frames, None


def handshake(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    sock.sendall(PREFACE + frame(SETTINGS, 0, b""))
    head = sock.recv(9, socket.MSG_WAITALL)
    assert len(head) == 9 and head[3] == SETTINGS, head  # the server's preface
    sock.recv(int.from_bytes(head[:3], "big"), socket.MSG_WAITALL)
    sock.sendall(frame(SETTINGS, 0x1, b""))
    return sock


def goaway_then_ping(port: int, code: int) -> tuple[list[tuple[int, int, bytes]], BaseException | None]:
    with handshake(port) as sock:
        sock.sendall(goaway(code))
        sock.sendall(frame(PING, 0, OPAQUE))
        return read_frames(sock)


async def test_ping_after_a_graceful_goaway_is_answered_then_the_connection_closes() -> None:
    server, port = await start_h2_app()
    try:
        frames, error = await asyncio.to_thread(goaway_then_ping, port, 0)
    finally:
        await close_server(server)
    assert error is None, f"connection reset instead of a clean close: {error}"
    assert (PING, 0x1, OPAQUE) in frames


async def test_frames_after_an_error_goaway_are_read_not_reset() -> None:
    """The peer said the connection failed: we stop (FIN), but keep reading what it still sends for a while."""

    def run() -> BaseException | None:
        with handshake(port) as sock:
            sock.sendall(goaway(0xFF))  # an unknown code: RFC 9113 §7 says no special behaviour
            _, error = read_frames(sock)  # our FIN comes first
            if error is not None:
                return error
            sock.sendall(frame(PING, 0, OPAQUE))  # into a socket that is still reading
            try:
                sock.recv(1)
            except OSError as e:
                return e
            return OSError(code, "SO_ERROR") if (code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)) else None

    server, port = await start_h2_app()
    try:
        error = await asyncio.to_thread(run)
    finally:
        await close_server(server)
    assert error is None, f"connection reset: {error}"
