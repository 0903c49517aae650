"""Short-lived certificates: the half-life (rotation time) lies in the future; the lifetime is the TTL."""

from __future__ import annotations

import datetime as dt

from hbone.identity.certs import CertificateAuthority, CertifiedKey, generate_key, now
from hbone.identity.spiffe import SpiffeId


def _issue(ttl: dt.timedelta) -> CertifiedKey:
    ca = CertificateAuthority.create_root("cluster.local")
    key = generate_key()
    chain = ca.sign(key.public_key(), SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b"), ttl=ttl)
    return CertifiedKey(key, chain, (chain[-1],))


def test_short_ttl_half_life_is_in_the_future() -> None:
    before = now()
    bundle = _issue(dt.timedelta(minutes=2))
    # Backdated at most a quarter of the TTL, so rotation is due about 45 s from now, not in the past.
    assert bundle.refresh_at() > before
    assert bundle.not_after - bundle.not_before == dt.timedelta(minutes=2)
    assert before - bundle.not_before <= dt.timedelta(seconds=31)


def test_long_ttl_keeps_the_full_backdate_and_full_lifetime() -> None:
    before = now()
    bundle = _issue(dt.timedelta(hours=24))
    assert dt.timedelta(minutes=5) <= before - bundle.not_before + dt.timedelta(seconds=1)
    assert bundle.not_after - bundle.not_before == dt.timedelta(hours=24)
