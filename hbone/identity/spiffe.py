"""SPIFFE identities (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md).

Istio identities have the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. Other SPIFFE paths
are valid opaque identities: they can be authenticated and compared, but never match namespace or
service-account rules (ztunnel parses exactly 5 path segments; anything else is not an Istio identity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hbone.errors import IdentityError

SCHEME = "spiffe://"
# SPIFFE-ID §2.1: trust domain chars are lowercase letters, digits, dots, dashes and underscores.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
# SPIFFE-ID §2.2: path segment chars are letters, digits, dots, dashes and underscores.
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_LEN = 2048  # SPIFFE-ID §2.3


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE id. `namespace`/`service_account` are set only for Istio-shaped ids."""

    trust_domain: str
    path: str  # always starts with "/" or is "" for a bare trust-domain id

    @property
    def is_istio(self) -> bool:
        return self._istio_parts() is not None

    @property
    def namespace(self) -> str | None:
        parts = self._istio_parts()
        return parts[0] if parts else None

    @property
    def service_account(self) -> str | None:
        parts = self._istio_parts()
        return parts[1] if parts else None

    def _istio_parts(self) -> tuple[str, str] | None:
        segs = self.path.split("/")
        # "/ns/<ns>/sa/<sa>" splits into ["", "ns", ns, "sa", sa]
        if len(segs) == 5 and segs[1] == "ns" and segs[3] == "sa":
            return segs[2], segs[4]
        return None

    @classmethod
    def istio(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """Build an Istio identity, validating every part."""
        return cls.parse(f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `spiffe://td/path`; raise `IdentityError` naming exactly what is wrong."""
        if not isinstance(text, str):
            raise IdentityError(f"SPIFFE id must be a string, got {type(text).__name__}")
        if len(text) > _MAX_LEN:
            raise IdentityError(f"SPIFFE id is {len(text)} characters long; the maximum is {_MAX_LEN}")
        if not text.lower().startswith(SCHEME):
            raise IdentityError(f"SPIFFE id {text!r} must start with {SCHEME!r}")
        if not text.startswith(SCHEME):
            raise IdentityError(f"SPIFFE id {text!r}: the scheme must be lowercase {SCHEME!r}")
        rest = text[len(SCHEME) :]
        if "?" in rest or "#" in rest:
            raise IdentityError(f"SPIFFE id {text!r} must not contain a query or fragment")
        td, slash, path = rest.partition("/")
        if not td:
            raise IdentityError(f"SPIFFE id {text!r} has an empty trust domain")
        if "@" in td or ":" in td:
            raise IdentityError(f"SPIFFE id {text!r}: trust domain must not contain user info or a port")
        if not _TRUST_DOMAIN.match(td):
            raise IdentityError(
                f"SPIFFE id {text!r}: trust domain {td!r} may only contain lowercase letters, digits, '.', '-', '_'"
            )
        if not slash:
            return cls(td, "")
        if path == "":
            raise IdentityError(f"SPIFFE id {text!r} must not end with '/'")
        for seg in path.split("/"):
            if seg == "":
                raise IdentityError(f"SPIFFE id {text!r} has an empty path segment")
            if seg in (".", ".."):
                raise IdentityError(f"SPIFFE id {text!r} has a relative path segment {seg!r}")
            if not _SEGMENT.match(seg):
                raise IdentityError(
                    f"SPIFFE id {text!r}: path segment {seg!r} may only contain letters, digits, '.', '-', '_'"
                )
        return cls(td, "/" + path)

    @classmethod
    def parse_istio(cls, text: str) -> SpiffeId:
        """Parse and require the Istio `/ns/<ns>/sa/<sa>` shape."""
        sid = cls.parse(text)
        if not sid.is_istio:
            raise IdentityError(f"{text!r} is not an Istio identity of the form spiffe://<td>/ns/<ns>/sa/<sa>")
        return sid

    @property
    def principal(self) -> str:
        """The identity without `spiffe://`, as Istio principals are written (`td/ns/x/sa/y`)."""
        return f"{self.trust_domain}{self.path}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"
