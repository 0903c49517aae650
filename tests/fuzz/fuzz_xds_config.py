"""microxds configuration loading: YAML (or JSON) text in, a validated `ConfigSnapshot` or one `ConfigError`
naming file and line out. Covers the YAML loader, Envoy resources via the protobuf registry, the ambient
shorthand (workloads, services, policies) and node groups."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import yaml

from microxds import protoreg
from microxds.errors import MicroxdsError
from microxds.sources.yamlconfig import parse_texts
from tests.fuzz.harness import Bytes, Harness, pack

_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    text = b.rest().decode("utf-8", "replace")
    name = "fuzz.json" if opts & 1 else "fuzz.yaml"
    snapshot = parse_texts([(name, text)])
    _ = (snapshot.version, snapshot.count())


def seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in sorted(_EXAMPLES.glob("*.y*ml")):
        text = path.read_bytes()
        if len(text) > 12_000:
            continue
        out[path.stem] = pack(b"\0", text)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        if len(docs) == 1:
            out[f"{path.stem}-json"] = pack(b"\1", json.dumps(docs[0]).encode())
    out["alias-bomb"] = pack(b"\0", b'a: &a ["x","x"]\nb: &b [*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b]\nd: [*c,*c,*c,*c]\n')
    out["tab-error"] = pack(b"\0", b"resources:\n\t- name: x\n")
    out["unknown-type"] = pack(b"\0", b'resources:\n  - "@type": type.googleapis.com/nope.Nope\n    name: x\n')
    out["not-a-mapping"] = pack(b"\0", b"- 1\n- 2\n")
    out["json-in-yaml-name"] = pack(b"\1", b'{"resources": [}')
    return out


def setup() -> None:
    """Import every protobuf module now: the first unknown `@type` otherwise does it inside an input (~3 s)."""
    protoreg.message_class("envoy.config.cluster.v3.Cluster")
    with contextlib.suppress(MicroxdsError):
        protoreg.message_class("fuzz.Unknown")


HARNESS = Harness("xds_config", run, (MicroxdsError,), seeds, max_len=16384, setup=setup)
