"""Sans-IO wire codecs: they take bytes or header lists and return values, events and bytes; no sockets, no asyncio.

- `authority`: HBONE targets (`ip:port`, `[v6]:port`, `host:port`).
- `tunnel_request`: HBONE CONNECT/POST request headers (build and validate) and responses.
- `baggage`, `forwarded`, `tracecontext`: the telemetry headers ztunnel sends (W3C Baggage, RFC 7239, W3C traceparent).
- `socks5`: RFC 1928/1929 server state machine.
- `httpconnect`: HTTP/1.1 CONNECT proxy request parser and responses.
- `clienthello`: TLS ClientHello reader (SNI, ALPN) and Istio SNI names.
- `proxyv2`: PROXY protocol v2 writer and reader.

Every parser raises only `hbone.errors.ProtocolError` subclasses on bad input, with a message naming the byte or
field and what was expected.
"""
