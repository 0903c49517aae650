"""`hbone ca init`, `hbone ca issue`, `hbone cert show`: the dev mesh CA and certificate inspection."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from cryptography import x509

from hbone.configtext import arg_type, duration_text
from hbone.errors import CertificateError, ConfigError
from hbone.identity.bundle import load_ca, write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority, load_pem_certs, spiffe_ids_of
from hbone.identity.spiffe import SpiffeId


def _duration(text: str) -> dt.timedelta:
    """`--ttl`: `90s`, `30m`, `24h`, `365d`, `1h30m` or seconds (`hbone.configtext`)."""
    return dt.timedelta(seconds=duration_text(text))


_TTL = arg_type(_duration, "duration")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="dev mesh certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")

    init = ca_sub.add_parser("init", help="create a root CA (and optionally an intermediate) in DIR")
    init.add_argument("--dir", required=True, type=Path, help="directory for ca-cert.pem, ca-key.pem, root-cert.pem")
    init.add_argument("--trust-domain", default="cluster.local")
    init.add_argument("--ttl", type=_TTL, default=dt.timedelta(days=3650), help="root validity (default 3650d)")
    init.add_argument("--intermediate", action="store_true", help="sign workloads with an intermediate below the root")
    init.add_argument("--force", action="store_true", help="overwrite an existing CA")
    init.set_defaults(func=cmd_ca_init)

    issue = ca_sub.add_parser("issue", help="issue a workload certificate in the Istio layout")
    issue.add_argument("--ca-dir", required=True, type=Path)
    issue.add_argument("--spiffe", required=True, help="spiffe://TD/ns/NS/sa/SA")
    issue.add_argument("--out", required=True, type=Path, help="directory for cert-chain.pem, key.pem, root-cert.pem")
    issue.add_argument("--ttl", type=_TTL, default=dt.timedelta(hours=24), help="validity (default 24h)")
    issue.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="extra IP SAN (repeatable)")
    issue.set_defaults(func=cmd_ca_issue)

    cert = sub.add_parser("cert", help="inspect certificates")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True, metavar="COMMAND")
    show = cert_sub.add_parser("show", help="print identity, SANs, validity and issuer chain of a PEM file or dir")
    show.add_argument("path", type=Path)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_cert_show)


def cmd_ca_init(args: argparse.Namespace) -> int:
    if (args.dir / "ca-key.pem").exists() and not args.force:
        raise ConfigError(f"{args.dir}: a CA already exists (use --force to replace it)")
    root = CertificateAuthority.create_root(args.trust_domain, ttl=args.ttl)
    if args.intermediate:
        write_ca(args.dir / "root", root)
        signer = root.create_intermediate(ttl=args.ttl / 2)
    else:
        signer = root
    write_ca(args.dir, signer)
    print(f"CA for trust domain {args.trust_domain} written to {args.dir}")
    return 0


def cmd_ca_issue(args: argparse.Namespace) -> int:
    ca = load_ca(args.ca_dir)
    sid = SpiffeId.parse(args.spiffe)
    if ca.trust_domain and sid.trust_domain != ca.trust_domain:
        raise ConfigError(f"{sid} is not in the CA's trust domain {ca.trust_domain!r}")
    bundle = ca.issue(sid, ttl=args.ttl, dns=args.dns, ips=args.ip)
    write_bundle(args.out, bundle)
    print(f"issued {sid} valid until {bundle.not_after.isoformat()} -> {args.out}")
    return 0


def describe(cert: x509.Certificate) -> dict[str, Any]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    ids = spiffe_ids_of(cert)
    return {
        "identity": str(ids[0]) if ids else None,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "sans": sans,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "ca": is_ca,
    }


def cmd_cert_show(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_dir():
        for name in ("cert-chain.pem", "certificates.pem", "ca-cert.pem", "root-cert.pem"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CertificateError(f"{args.path}: no certificate file found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CertificateError(f"{path}: cannot read ({e.strerror})") from e
    chain = [describe(c) for c in load_pem_certs(data, source=str(path))]
    if args.json:
        print(json.dumps({"file": str(path), "chain": chain}, indent=2))
        return 0
    for i, c in enumerate(chain):
        role = "leaf" if i == 0 and not c["ca"] else "CA"
        print(f"[{i}] {role}: {c['identity'] or c['subject'] or '(empty subject)'}")
        print(f"    subject:  {c['subject'] or '(empty)'}")
        print(f"    issuer:   {c['issuer']}")
        print(f"    SANs:     {', '.join(c['sans']) or '-'}")
        print(f"    valid:    {c['not_before']} .. {c['not_after']}")
    return 0
