"""Who may read which node groups: the access rule of the xDS and CSDS services.

A caller is described by what the transport proved (`Caller`): a SPIFFE id from a verified client certificate
(the HBONE mTLS port, or a client certificate on the TLS port), a JWT subject from a verified
`authorization: Bearer` token, and the peer address. A stream's node group is the node hash of its first request
(`--node-group-by`); the stream is refused with PERMISSION_DENIED unless a rule lets the caller read that group.
Decisions are pure functions of (caller, group), so they are tested without sockets (DESIGN §5.7).

Defaults, for plaintext-localhost development: with no access file, callers connecting from a loopback address
may read every group, and so may any caller with a verified mesh identity or JWT; anyone else (a remote caller on
a plaintext or server-auth TLS port, with no token) is denied. With an access file only its rules apply, plus
loopback callers if `allow_loopback` stays true. Istio has the same shape (`XDS_AUTH`, `pilot/pkg/xds/auth.go`).

Access file (YAML):

    allow_loopback: true            # default true: anything from 127.0.0.0/8 or ::1 may read every group
    allow_anonymous: false          # default false: unauthenticated remote callers may read every group
    rules:
      - identities: ["spiffe://cluster.local/ns/edge/sa/*"]   # globs on the verified SPIFFE id
        subjects: ["system:serviceaccount:edge:*"]           # globs on the verified JWT `sub`
        groups: ["edge", "edge-*"]                            # globs on the node group ("*" = any)
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import jwt

from hbone.configtext import unknown_keys_text
from hbone.errors import ConfigError as HboneConfigError
from hbone.errors import GrpcStatus
from hbone.safeyaml import read_limited, safe_load
from microxds.errors import ConfigError, MicroxdsError

BEARER = "bearer "


class AccessDenied(MicroxdsError):
    """The caller may not read the node group it asked for (PERMISSION_DENIED)."""

    grpc_status = GrpcStatus.PERMISSION_DENIED


class Unauthenticated(MicroxdsError):
    """A credential was presented but could not be verified (UNAUTHENTICATED)."""

    grpc_status = GrpcStatus.UNAUTHENTICATED


@dataclass(frozen=True, slots=True)
class Caller:
    """What the transport proved about the other end of a stream."""

    identity: str | None = None  # verified SPIFFE id
    subject: str | None = None  # verified JWT `sub`
    address: tuple[str, int] | None = None
    transport: str = "plaintext"  # plaintext | tls | mtls

    @property
    def loopback(self) -> bool:
        if self.address is None:
            return False
        try:
            return ipaddress.ip_address(self.address[0].split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    @property
    def authenticated(self) -> bool:
        return self.identity is not None or self.subject is not None

    def __str__(self) -> str:
        who = self.identity or (f"jwt:{self.subject}" if self.subject else "anonymous")
        where = f"{self.address[0]}:{self.address[1]}" if self.address else "?"
        return f"{who}@{where}/{self.transport}"


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Callers matching any identity or subject glob may read groups matching any group glob."""

    identities: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("*",)

    def matches(self, caller: Caller, group: str) -> bool:
        who = (caller.identity is not None and _any(self.identities, caller.identity)) or (
            caller.subject is not None and _any(self.subjects, caller.subject)
        )
        return who and _any(self.groups, group)


def _any(patterns: Iterable[str], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    rules: tuple[AccessRule, ...] = ()
    allow_loopback: bool = True
    allow_anonymous: bool = False
    allow_authenticated: bool = False  # any verified identity/subject reads every group (the no-file default)
    source: str = "built-in default"

    @classmethod
    def permissive_default(cls) -> AccessPolicy:
        return cls(allow_loopback=True, allow_authenticated=True)

    @classmethod
    def allow_all(cls) -> AccessPolicy:
        return cls(allow_loopback=True, allow_anonymous=True, allow_authenticated=True, source="allow all")

    def allows(self, caller: Caller, group: str) -> bool:
        if self.allow_anonymous or (self.allow_loopback and caller.loopback):
            return True
        if self.allow_authenticated and caller.authenticated:
            return True
        return any(rule.matches(caller, group) for rule in self.rules)

    def check(self, caller: Caller, group: str) -> None:
        if not self.allows(caller, group):
            raise AccessDenied(f"{caller} may not read node group {group!r} (access rules: {self.source})")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where} must be a string or a list of strings")


def policy_from_mapping(doc: Mapping[str, Any], source: str = "<mapping>") -> AccessPolicy:
    unknown = unknown_keys_text(doc, ("allow_loopback", "allow_anonymous", "rules"))
    if unknown is not None:
        raise ConfigError(unknown, file=source)
    rules: list[AccessRule] = []
    for i, raw in enumerate(doc.get("rules") or []):
        if not isinstance(raw, Mapping) or set(raw) - {"identities", "subjects", "groups"}:
            raise ConfigError(f"rules[{i}] must be a mapping of identities, subjects, groups", file=source)
        rule = AccessRule(
            identities=_strings(raw.get("identities"), f"rules[{i}].identities"),
            subjects=_strings(raw.get("subjects"), f"rules[{i}].subjects"),
            groups=_strings(raw.get("groups", "*"), f"rules[{i}].groups"),
        )
        if not rule.identities and not rule.subjects:
            raise ConfigError(f"rules[{i}] names no identities or subjects", file=source)
        rules.append(rule)
    return AccessPolicy(
        rules=tuple(rules),
        allow_loopback=bool(doc.get("allow_loopback", True)),
        allow_anonymous=bool(doc.get("allow_anonymous", False)),
        source=source,
    )


def load_policy(path: str | os.PathLike[str]) -> AccessPolicy:
    try:
        doc = safe_load(read_limited(path), str(path)) or {}
    except HboneConfigError as exc:
        raise ConfigError(f"cannot read access rules: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError("the access file must be a mapping", file=str(path))
    return policy_from_mapping(doc, str(path))


@dataclass(frozen=True)
class JwtVerifier:
    """Verifies bearer tokens with PyJWT: signature by one of `keys`, the issuer and one of the audiences, all
    required (without them any token the key ever signed, for any service, would be accepted)."""

    keys: Sequence[Any]
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA", "PS256")
    leeway: float = 30.0
    _options: Mapping[str, Any] = field(default_factory=lambda: {"require": ["exp", "sub"]})

    def __post_init__(self) -> None:
        if not self.issuer or not self.audiences:
            raise ConfigError(
                "JWT verification needs an issuer and at least one audience (--jwt-issuer ISS --jwt-audience AUD)"
            )

    @classmethod
    def from_files(
        cls, paths: Iterable[str | os.PathLike[str]], *, issuer: str | None = None, audiences: Sequence[str] = ()
    ) -> JwtVerifier:
        """PEM public keys (one per file), e.g. the Kubernetes service-account signing key."""
        keys = [Path(p).read_bytes() for p in paths]
        if not keys:
            raise ConfigError("JWT verification needs at least one public key")
        return cls(keys, issuer, tuple(audiences))

    def subject(self, token: str) -> str:
        """The verified `sub` of `token`; raises Unauthenticated."""
        last: Exception | None = None
        for key in self.keys:
            options: Any = {**self._options, "require": [*self._options["require"], "iss", "aud"]}
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(self.algorithms),
                    issuer=self.issuer,
                    audience=list(self.audiences) or None,
                    leeway=self.leeway,
                    options=options,
                )
            except jwt.InvalidSignatureError as exc:
                last = exc  # try the next key (rotation keeps old and new keys side by side)
                continue
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"invalid bearer token: {exc}") from None
            return str(claims["sub"])
        raise Unauthenticated(f"invalid bearer token: {last}")


def bearer_token(values: Iterable[object]) -> str | None:
    """The token of the first `authorization: Bearer ...` value (gRPC metadata is case-folded keys)."""
    for value in values:
        if isinstance(value, str) and value[: len(BEARER)].lower() == BEARER:
            return value[len(BEARER) :].strip()
    return None
