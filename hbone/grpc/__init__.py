"""Raw gRPC (grpc/doc/PROTOCOL-HTTP2.md) on the hbone HTTP/2 driver; grpcio is only ever a test peer.

Sans-IO: `framing` (Length-Prefixed-Message, gzip), `metadata` (headers, ``grpc-timeout``, ``-bin``), `status`
(trailers, Trailers-Only, error mapping), `codec` (raw bytes or protobuf per call), `h2frames` (capture decoder).
asyncio: `server.GrpcServer` (a `hbone.server.StreamApp`; Health registered by default), `client.Channel`
(h2c, TLS, mesh mTLS, or through an HBONE tunnel via `transport`), `health`, and `testing.EchoService`.

Nothing is imported here, so ``import hbone.grpc.framing`` stays cheap; import the submodules you use.
"""
