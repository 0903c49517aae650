"""Copy bytes both ways between an HTTP/2 stream (tunnel) and a TCP connection, with half-close.

RFC 9113 §8.5 (CONNECT): a TCP FIN becomes END_STREAM and END_STREAM becomes a TCP FIN; a TCP reset or error
becomes RST_STREAM(CONNECT_ERROR), and a stream reset aborts the TCP connection. Memory stays bounded: each
direction holds at most one read chunk plus the stream's send buffer / the transport's write buffer, and waits
on `drain()` for backpressure.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hbone.errors import H2ErrorCode, HboneError, StreamReset
from hbone.net.stream import Stream

CHUNK = 64 * 1024


@dataclass(slots=True)
class SpliceResult:
    """Bytes moved each way, and what broke the splice (None after a clean close in both directions)."""

    to_stream: int = 0  # TCP -> stream (bytes sent to the HTTP/2 peer)
    from_stream: int = 0  # stream -> TCP (bytes received from the HTTP/2 peer)
    error: BaseException | None = None


async def splice(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, chunk: int = CHUNK
) -> SpliceResult:
    """Relay until both directions have ended; then close `writer`. Never raises except on cancellation.

    On error the stream is reset (CONNECT_ERROR for TCP failures, CANCEL when cancelled) and the TCP connection
    aborted; the error is returned in `SpliceResult.error`.
    """
    result = SpliceResult()

    async def tcp_to_stream() -> None:
        while True:
            data = await reader.read(chunk)
            if not data:
                stream.write_eof()  # TCP FIN -> END_STREAM
                return
            await stream.send(data)
            result.to_stream += len(data)

    async def stream_to_tcp() -> None:
        while True:
            data = await stream.read(chunk)
            if not data:
                if writer.can_write_eof():  # END_STREAM -> TCP FIN (TLS cannot half-close)
                    writer.write_eof()
                return
            writer.write(data)
            result.from_stream += len(data)
            await writer.drain()

    up = asyncio.ensure_future(tcp_to_stream())
    down = asyncio.ensure_future(stream_to_tcp())
    try:
        pending: set[asyncio.Future[None]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            failed = next((t for t in done if not t.cancelled() and t.exception() is not None), None)
            if failed is not None:
                result.error = failed.exception()
                break
    except asyncio.CancelledError:
        _abort(stream, writer, H2ErrorCode.CANCEL)
        await _reap(up, down)
        raise
    if result.error is not None:
        code = H2ErrorCode.CANCEL if isinstance(result.error, HboneError) else H2ErrorCode.CONNECT_ERROR
        _abort(stream, writer, code)
        await _reap(up, down)
        return result
    # Both directions ended cleanly: wait until our END_STREAM left (bounded by the stream's own lifetime).
    await stream.wait_closed()
    if isinstance(stream.error, StreamReset) and stream.error.code != H2ErrorCode.NO_ERROR:
        result.error = stream.error
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return result


def _abort(stream: Stream, writer: asyncio.StreamWriter, code: int) -> None:
    stream.reset(code)
    writer.transport.abort()


async def _reap(*tasks: asyncio.Future[None]) -> None:
    for task in tasks:
        task.cancel()
    # Retrieve every outcome so no "exception was never retrieved" is logged.
    await asyncio.gather(*tasks, return_exceptions=True)
