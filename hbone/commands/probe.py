"""`hbone probe`: open one tunnel and report each step — TCP, TLS, identity, CONNECT — naming the step that failed.

Only an HTTP status the server sent is ever printed as `status`. A failed TLS handshake says which side refused
(our verification: "not signed by your roots"; the server's alert: "the server refused our certificate"), shows the
server's identity when a second, unverified handshake can read it, and an identity mismatch says "expected identity
X, got Y". A plaintext probe of a TLS port and a TLS probe of a plaintext port are named as such.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from hbone.client import Endpoint, HboneClient
from hbone.errors import ConfigError, ConnectionLost, ConnectRefused, HboneError, PeerIdentityError
from hbone.identity.bundle import load_bundle
from hbone.identity.certs import CertifiedKey, spiffe_ids_of
from hbone.identity.manager import IdentityManager
from hbone.tls import MeshTls, client_context

PEEK_TIMEOUT = 5.0  # seconds for the diagnostic second handshake
PLAINTEXT_REFUSED = "the server closed the plaintext HTTP/2 connection; is this an mTLS port? drop --plaintext"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe = sub.add_parser("probe", help="open one tunnel and report TLS, identity, status and timings")
    probe.add_argument("address", help="HBONE server HOST:PORT")
    probe.add_argument("--target", required=True)
    probe.add_argument("--certs", type=Path)
    probe.add_argument("--plaintext", action="store_true")
    probe.add_argument(
        "--expect-identity", action="append", default=[], help="the server's SPIFFE id (default: our trust domain)"
    )
    probe.add_argument("--post", action="store_true")
    probe.add_argument("--json", action="store_true")
    probe.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    report = asyncio.run(probe(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>16}: {v}")
    return 0 if report.get("status") == 200 else 1


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    if args.plaintext:
        bundle = None
    elif args.certs is None:
        raise ConfigError("--certs DIR is required unless --plaintext is given")
    else:
        bundle = load_bundle(args.certs)
    client = HboneClient(MeshTls(IdentityManager.fixed(bundle)) if bundle is not None else None)
    ep = Endpoint.parse(args.address, identities=args.expect_identity, post=args.post)
    report: dict[str, Any] = {
        "server": f"{ep.host}:{ep.port}",
        "target": args.target,
        "mode": "POST" if args.post else "CONNECT",
    }
    t0 = time.perf_counter()
    try:
        try:
            conn = await client.pool.connection(client._key(ep))
        except HboneError as e:
            report.update(await _connection_failure(e, ep, bundle, args.expect_identity, plaintext=args.plaintext))
            return report
        t1 = time.perf_counter()
        report["connect_ms"] = round((t1 - t0) * 1000, 3)
        sslobj = conn.ssl_object  # type: ignore[attr-defined]
        if sslobj is not None:
            report["tls_version"] = sslobj.version()
            report["alpn"] = sslobj.selected_alpn_protocol()
            report["cipher"] = sslobj.cipher()[0]
            report["peer_identity"] = str(client.peer_identity(conn))
        try:
            tunnel = await client.open(args.target, ep)
        except ConnectRefused as e:  # the server answered: its status is a fact
            report.update(step="connect", status=e.status, error=str(e))
            return report
        except ConnectionLost as e:
            if sslobj is None:
                report.update(step="http2", error=f"{e}: {PLAINTEXT_REFUSED}")
            else:  # TLS 1.3: a server refuses a client certificate only after our side of the handshake is done
                alert = _alert(e)
                why = f"TLS alert: {alert}" if alert else "it closed the connection right after the handshake"
                report.update(
                    step="tls", refused_by="server", error=f"the server refused our certificate ({why}): "
                    "does it trust our CA and trust domain?",
                )  # fmt: skip
            return report
        except HboneError as e:  # no response: the stream was reset or refused
            report.update(step="connect", error=f"no response to the {report['mode']}: {e}")
            return report
        report["status"] = tunnel.status
        report["tunnel_ms"] = round((time.perf_counter() - t1) * 1000, 3)
        if tunnel.peer_metadata is not None and not tunnel.peer_metadata.is_empty():
            report["response_baggage"] = tunnel.peer_metadata.to_baggage()
        tunnel.write_eof()
        tunnel.reset()
    finally:
        report["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        await client.close()
    return report


def _alert(exc: BaseException) -> str | None:
    """The TLS alert in an exception's cause chain, as words ("unknown ca"), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and "ALERT" in str(seen.reason or "").upper():
            return str(seen.reason).upper().rsplit("ALERT_", 1)[-1].lower().replace("_", " ")
        seen = seen.__cause__ or seen.__context__
    return None


async def _connection_failure(
    exc: HboneError, ep: Endpoint, bundle: CertifiedKey | None, expected: list[str], *, plaintext: bool
) -> dict[str, Any]:
    """What went wrong before any HTTP exchange: the step, who refused, and what to change."""
    cause = exc.__cause__
    if plaintext:
        if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError):
            return {"step": "tcp", "error": str(exc)}
        return {"step": "http2", "error": f"{exc}: {PLAINTEXT_REFUSED}"}
    assert bundle is not None
    if isinstance(cause, ssl.SSLCertVerificationError):
        peer = await _peek(ep, bundle)
        why = cause.verify_message or cause.reason or str(cause)
        out: dict[str, Any] = {"step": "tls", "refused_by": "us"}
        if cause.verify_code in (2, 19, 20, 21):  # issuer unknown / self-signed in chain / no local issuer
            out["error"] = f"the server's certificate is not signed by your roots ({why}); check {ep.host}'s CA"
        else:
            out["error"] = f"we rejected the server's certificate: {why}"
        out.update(peer)
        return out
    if isinstance(cause, ssl.SSLError):
        reason = (cause.reason or str(cause)).upper()
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH" in reason:
            where = f"{ep.host}:{ep.port}"
            return {"step": "tls", "error": f"{where} does not speak TLS (a plaintext port? try --plaintext)"}
        out = {"step": "tls", "refused_by": "server"}
        alert = _alert(cause)
        if alert:
            out["error"] = f"the server refused our certificate (TLS alert: {alert}): it does not trust our CA"
        else:
            out["error"] = f"TLS handshake failed: {cause.reason or cause}"
        out.update(await _peek(ep, bundle))
        return out
    if isinstance(exc, PeerIdentityError):
        peer = await _peek(ep, bundle)
        got = peer.get("peer_identity") or "no SPIFFE identity"
        want = ", ".join(expected) or "a SPIFFE identity"
        return {"step": "identity", "refused_by": "us", "error": f"expected identity {want}, got {got}", **peer}
    if isinstance(cause, OSError):
        return {"step": "tcp", "error": str(exc)}
    return {"step": "tls", "refused_by": "server", "error": f"{exc} (the server closed the connection: it may "
            "have refused our certificate)", **await _peek(ep, bundle)}  # fmt: skip


async def _peek(ep: Endpoint, bundle: CertifiedKey) -> dict[str, Any]:
    """A second handshake that verifies nothing, to show who the server claims to be."""
    ctx = client_context(bundle)
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(PEEK_TIMEOUT):
            _, writer = await asyncio.open_connection(ep.host, ep.port, ssl=ctx, server_hostname="")
    except (OSError, TimeoutError):
        return {}
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return {}
        cert = x509.load_der_x509_certificate(der)
        ids = spiffe_ids_of(cert)
        return {
            "peer_identity": ", ".join(map(str, ids)) or None,
            "peer_issuer": cert.issuer.rfc4514_string() or "(empty subject)",
        }
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
