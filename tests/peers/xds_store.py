"""Helpers for tests of the etcd config store: resource values, keys, and a recording source."""

from __future__ import annotations

import json

from microxds.resources import CLUSTER, ENDPOINT

PREFIX = "/microxds/test/"


def cla_value(name: str, port: int, host: str = "127.0.0.1") -> bytes:
    """A ClusterLoadAssignment with one endpoint, as the JSON value of a store key."""
    return json.dumps({
        "@type": ENDPOINT, "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": host, "port_value": port}}}}]}],
    }).encode()  # fmt: skip


def cluster_value(name: str, *, eds: bool = True, ttl: str | None = None, port: int = 1) -> bytes:
    body: dict[str, object] = {"@type": CLUSTER, "name": name, "connect_timeout": "1s"}
    if eds:
        body |= {"type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}
    else:
        body |= {"type": "STATIC", "load_assignment": json.loads(cla_value(name, port))}
        del body["load_assignment"]["@type"]  # type: ignore[index]
    if ttl is not None:
        body = {"@type": "type.googleapis.com/envoy.service.discovery.v3.Resource", "ttl": ttl, "resource": body}
    return json.dumps(body).encode()


def key(type_url: str, name: str, prefix: str = PREFIX) -> str:
    return prefix + type_url.rsplit("/", 1)[-1] + "/" + name
