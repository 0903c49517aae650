"""Built-in policies for deployments without a control plane.

Istio itself has no same-namespace default (docs/istio.md §4 "Default behaviour": no policies → allow). The product
brief does: "by default, only 'same trust domain and namespace' communication is allowed". Both are expressed here as
ordinary `Policy` values so the one engine decides every connection and a config dump shows what is enforced.
"""

from __future__ import annotations

import enum

from hbone.authz.model import Action, Clause, Match, Policy, Rule, Scope, StringMatch
from hbone.errors import ConfigError
from hbone.identity.spiffe import SpiffeId


class DefaultMode(enum.Enum):
    """What `hbone serve` enforces when no policies are configured."""

    SAME_NAMESPACE = "same-namespace"  # the brief's default
    ALLOW_ALL = "allow-all"  # Istio's default
    POLICIES = "policies"  # only the configured policies (none configured → allow, as in Istio)

    @classmethod
    def parse(cls, text: str) -> DefaultMode:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown authorization mode {text!r}; expected one of: {choices}") from None


SAME_NAMESPACE_NAME = "hbone-same-namespace"
ALLOW_ALL_NAME = "hbone-allow-all"
STATIC_STRICT_NAME = "istio_converted_static_strict"


def same_namespace_policy(trust_domain: str, namespace: str, *, name: str = SAME_NAMESPACE_NAME) -> Policy:
    """ALLOW only Istio identities of `trust_domain` in `namespace`.

    Written as namespaces=[exact ns] AND principals=[prefix "td/"]: the namespace match fails for plaintext and
    for non-Istio SPIFFE ids, and a trust domain cannot contain "/", so the prefix pins it exactly. (A single
    principal prefix "td/ns/x/sa/" would also admit a longer non-Istio path such as td/ns/x/sa/y/z.)
    """
    SpiffeId.istio(trust_domain, namespace, "default")  # validates both parts with precise errors
    match = Match(
        namespaces=(StringMatch.exact(namespace),),
        principals=(StringMatch.prefix(f"{trust_domain}/"),),
    )
    return Policy(
        name=name,
        namespace=namespace,
        scope=Scope.NAMESPACE,
        action=Action.ALLOW,
        rules=(Rule((Clause((match,)),)),),
    )


def allow_all_policy(namespace: str, *, name: str = ALLOW_ALL_NAME) -> Policy:
    """ALLOW everything: `rules: [{}]`, one rule with no clauses, matches every connection (docs/istio.md §4)."""
    return Policy(name=name, namespace=namespace, scope=Scope.NAMESPACE, action=Action.ALLOW, rules=(Rule(),))


def static_strict_policy(root_namespace: str = "istio-system") -> Policy:
    """istiod's PeerAuthentication STRICT policy: DENY `not_principals: [presence]`, i.e. deny plaintext."""
    match = Match(not_principals=(StringMatch.presence(),))
    return Policy(
        name=STATIC_STRICT_NAME,
        namespace=root_namespace,
        scope=Scope.WORKLOAD_SELECTOR,
        action=Action.DENY,
        rules=(Rule((Clause((match,)),)),),
    )


def default_policies(mode: DefaultMode, destination: SpiffeId) -> tuple[Policy, ...]:
    """The built-in policies for a destination workload with identity `destination` under `mode`."""
    if mode is DefaultMode.SAME_NAMESPACE:
        ns = destination.namespace
        if ns is None:
            raise ConfigError(
                f"same-namespace authorization needs an Istio identity (spiffe://td/ns/x/sa/y), got {destination}"
            )
        return (same_namespace_policy(destination.trust_domain, ns),)
    if mode is DefaultMode.ALLOW_ALL:
        return (allow_all_policy(destination.namespace or "default"),)
    return ()
