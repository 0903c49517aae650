"""Resources wrapped in `envoy.service.discovery.v3.Resource`: how a config gives one resource a TTL.

Envoy's file-based xDS and our config files take a resource as its own `@type`'d message, or wrapped:

    - "@type": type.googleapis.com/envoy.service.discovery.v3.Resource
      ttl: 30s                      # clients drop it 30 s after they last heard of it (xDS "TTL")
      resource:
        "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
        name: echo
        ...

`unwrap` turns the wrapper into the inner message plus its TTL; the server sends TTL'd resources wrapped again
(Delta always, SotW per the `Resource` wrapper rule) and heartbeats them while they are current.
"""

from __future__ import annotations

from google.protobuf.message import Message

from microxds.protoreg import message_class

from ..errors import ConfigError
from ..resources import PREFIX, resource_name

DISCOVERY_RESOURCE = PREFIX + "envoy.service.discovery.v3.Resource"
MAX_TTL = 30 * 86400.0  # a month; a longer "TTL" is a typo for forever


def unwrap(type_url: str, message: Message) -> tuple[str, Message, float | None]:
    """(type_url, message, ttl seconds or None) of a parsed config resource, unwrapping a `Resource` wrapper."""
    if type_url != DISCOVERY_RESOURCE:
        return type_url, message, None
    wrapper: object = message
    if not wrapper.HasField("resource"):  # type: ignore[attr-defined]
        raise ConfigError("a envoy.service.discovery.v3.Resource wrapper needs `resource` (the wrapped resource)")
    packed = wrapper.resource  # type: ignore[attr-defined]
    inner_url = PREFIX + packed.type_url.rsplit("/", 1)[-1]
    if inner_url == DISCOVERY_RESOURCE:
        raise ConfigError("a Resource wrapper cannot wrap another Resource wrapper")
    inner = message_class(inner_url)()
    inner.ParseFromString(packed.value)
    ttl: float | None = None
    if wrapper.HasField("ttl"):  # type: ignore[attr-defined]
        ttl = wrapper.ttl.ToTimedelta().total_seconds()  # type: ignore[attr-defined]
        if not 0 < ttl <= MAX_TTL:
            raise ConfigError(f"ttl must be between 0 and {MAX_TTL:.0f}s, got {ttl}s")
    declared = str(wrapper.name)  # type: ignore[attr-defined]
    if declared:
        actual = resource_name(inner, inner_url)
        if declared != actual:
            raise ConfigError(f"the Resource wrapper's name {declared!r} differs from its resource's name {actual!r}")
    if len(wrapper.aliases) or wrapper.HasField("cache_control") or wrapper.HasField("metadata"):  # type: ignore[attr-defined]
        raise ConfigError("a Resource wrapper in config may set only `resource`, `ttl` and `name`")
    return inner_url, inner, ttl
