"""`microxds apply` and `microxds get`: write validated config into the etcd store, list what it holds.

Also the store options shared with `serve --store` (`add_store_args`, `store_settings`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from microxds.errors import ConfigError
from microxds.etcd.client import EtcdClient, StoreURL
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.files import config_files, read_texts
from microxds.sources.storekeys import parse_entry, split_key
from microxds.store import apply, read
from microxds.validate import validate_texts

PASSWORD_ENV = "MICROXDS_STORE_PASSWORD"

APPLY_HELP = """\
Validate the config in PATH... exactly as `serve --config` does (files or directories, all together), then write
every resource that differs from the store into ONE etcd transaction (all or nothing), one key per resource
(PREFIX/TYPE/NAME, PREFIX/groups/GROUP/TYPE/NAME). Prints what changed. --prune also deletes the keys under the
prefix that PATH does not define; --dry-run prints the changes without writing.
"""

GET_HELP = "List what the store holds under its prefix: one line per key (type, name, version), or the values."


@dataclass(frozen=True)
class StoreSettings:
    url: StoreURL
    ssl: ssl.SSLContext | None
    user: str | None
    password: str | None

    def client(self) -> EtcdClient:
        return EtcdClient(self.url.endpoints, ssl=self.ssl, user=self.user, password=self.password)


def add_store_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--store", required=required, metavar="etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
        help="etcd endpoints and key prefix (etcds:// for TLS)",
    )  # fmt: skip
    p.add_argument("--store-cacert", type=Path, metavar="PEM", help="CA that signed the etcd server certificates")
    p.add_argument("--store-cert", type=Path, metavar="PEM", help="client certificate for etcd (mTLS)")
    p.add_argument("--store-key", type=Path, metavar="PEM", help="key of --store-cert")
    p.add_argument(
        "--store-user", metavar="NAME", help=f"etcd user (password from ${PASSWORD_ENV} or --store-password-file)"
    )
    p.add_argument("--store-password-file", type=Path, metavar="FILE", help="file holding the etcd user's password")


def store_settings(args: argparse.Namespace) -> StoreSettings:
    url = StoreURL.parse(args.store)
    tls = url.tls or bool(args.store_cacert or args.store_cert)
    if args.store_key and not args.store_cert:
        raise ConfigError("--store-key needs --store-cert")
    ctx: ssl.SSLContext | None = None
    if tls:
        try:
            ctx = ssl.create_default_context(cafile=str(args.store_cacert) if args.store_cacert else None)
            if args.store_cert:
                ctx.load_cert_chain(str(args.store_cert), str(args.store_key) if args.store_key else None)
            ctx.set_alpn_protocols(["h2"])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"etcd TLS files: {exc}") from None
        url = StoreURL(url.endpoints, url.prefix, tls=True)
    password: str | None = None
    if args.store_user:
        if args.store_password_file:
            try:
                password = args.store_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read --store-password-file: {exc}") from None
        else:
            password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise ConfigError(f"--store-user needs a password: --store-password-file or ${PASSWORD_ENV}")
    elif args.store_password_file:
        raise ConfigError("--store-password-file needs --store-user")
    return StoreSettings(url, ctx, args.store_user, password)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "apply", help="write config into the etcd store", description=APPLY_HELP
    )
    p.add_argument("-f", "--filename", dest="paths", action="append", required=True, type=Path, metavar="PATH",
                   help="config file or directory (repeatable)")  # fmt: skip
    add_store_args(p, required=True)
    p.add_argument("--prune", action="store_true", help="delete keys under the prefix that PATH does not define")
    p.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    p.set_defaults(func=run_apply)
    g: argparse.ArgumentParser = sub.add_parser("get", help="list what the etcd store holds", description=GET_HELP)
    add_store_args(g, required=True)
    g.add_argument("-o", "--output", choices=["keys", "json", "yaml"], default="keys",
                   help="keys: one line per key (default); json/yaml: a config file `apply -f` takes back")  # fmt: skip
    g.set_defaults(func=run_get)


def load_paths(paths: list[Path]) -> ConfigSnapshot:
    """Validate PATH... together as one configuration, with every check `microxds validate` and `serve` apply."""
    texts: list[tuple[str, str]] = []
    for path in paths:
        texts.extend(read_texts(config_files(path)))
    report = validate_texts(", ".join(str(p) for p in paths), texts)
    if not report.ok or report.snapshot is None:
        raise ConfigError("\n".join(report.errors) + f"\n{len(report.errors)} error(s): nothing written")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return report.snapshot


async def _apply(settings: StoreSettings, snap: ConfigSnapshot, *, prune: bool, dry_run: bool) -> int:
    async with settings.client() as client:
        result = await apply(client, settings.url.prefix, snap, prune=prune, dry_run=dry_run)
    for line in result.plan.lines():
        print(("would have " if dry_run else "") + line)
    p = result.plan
    summary = f"{len(p.created)} created, {len(p.updated)} updated, {len(p.deleted)} deleted, {p.unchanged} unchanged"
    if result.written:
        print(f"microxds: applied at revision {result.revision}: {summary}")
    else:
        print(f"microxds: {'dry run' if dry_run else 'nothing to change'} (revision {result.revision}): {summary}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    settings = store_settings(args)
    snap = load_paths(args.paths)
    return asyncio.run(_apply(settings, snap, prune=args.prune, dry_run=args.dry_run))


async def _get(settings: StoreSettings, output: str) -> int:
    async with settings.client() as client:
        revision, stored = await read(client, settings.url.prefix)
    prefix = settings.url.prefix
    if output == "keys":
        for key, value in sorted(stored.items()):
            try:
                entry = parse_entry(prefix, key, value.value)
                res = entry.resource
                ttl = f" ttl={res.ttl:g}s" if res.ttl is not None else ""
                print(f"{key}\t{res.version}\trev={value.mod_revision}{ttl}")
            except ConfigError as exc:
                print(f"{key}\tINVALID\trev={value.mod_revision}\t{exc.reason}")
        print(f"# {len(stored)} keys at revision {revision}")
        return 0
    common: list[Any] = []
    groups: dict[str, list[Any]] = {}
    for key, value in sorted(stored.items()):
        try:
            group, _, _ = split_key(prefix, key)
            parse_entry(prefix, key, value.value)
        except ConfigError as exc:
            print(f"# skipped invalid {exc}")
            continue
        doc = yaml.safe_load(value.value.decode())
        (groups.setdefault(group, []) if group else common).append(doc)
    body: dict[str, Any] = {"resources": common}
    if groups:
        body["groups"] = {g: {"resources": items} for g, items in groups.items()}
    if output == "json":
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(body, sort_keys=False), end="")
    return 0


def run_get(args: argparse.Namespace) -> int:
    return asyncio.run(_get(store_settings(args), args.output))
