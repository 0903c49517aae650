"""Config files are hostile input: aliases, nesting depth and size are capped with `file:line` errors, and no
failure while loading ends the watcher (the last good config stays served and later edits still apply)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from hbone.config import read_yaml
from hbone.errors import ConfigError as HboneConfigError
from hbone.safeyaml import MAX_CONFIG_BYTES, MAX_DEPTH
from microxds.commands.agent import config_from_yaml
from microxds.errors import ConfigError
from microxds.server.access import load_policy
from microxds.sources import files
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.files import FileSource, load
from microxds.sources.yamlconfig import parse_texts

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLUSTER = f'resources:\n  - "@type": {CDS}\n    name: {{name}}\n    connect_timeout: 1s\n'
# Nine-fold aliases, five levels: 59,049 leaves from ~300 bytes (main served it; one more level per 9x the cost).
LAUGHS = f"""\
resources:
  - "@type": {CDS}
    name: laughs
    connect_timeout: 1s
    metadata:
      filter_metadata:
        x:
          a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]
          b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
          c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
          d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
          e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]
"""


def deep_struct(depth: int) -> str:
    """A cluster whose metadata Struct nests `depth` levels (built as text: json.dumps itself recurses)."""
    res = json.dumps({"@type": CDS, "name": "deep", "connect_timeout": "1s", "metadata": {"filter_metadata": {}}})
    nested = '{"k": ' * depth + "1" + "}" * depth
    return '{"resources": [' + res[: -len("{}}}")] + '{"x": ' + nested + "}}}]}"


def test_aliases_of_mappings_and_lists_are_refused_at_their_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_texts([("cfg.yaml", LAUGHS)])
    assert (info.value.file, info.value.line) == ("cfg.yaml", 9) and "alias *a" in info.value.reason
    scalar = f'resources:\n  - {{"@type": {CDS}, name: &n a, connect_timeout: 1s, alt_stat_name: *n}}\n'
    assert parse_texts([("cfg.yaml", scalar)]).count() == 1  # a scalar alias copies nothing: allowed


@pytest.mark.parametrize(("name", "depth"), [("cfg.json", 5000), ("cfg.yaml", 990), ("cfg.json", MAX_DEPTH + 5)])
def test_deep_nesting_is_a_config_error_with_a_line(name: str, depth: int) -> None:
    text = deep_struct(depth)
    if name.endswith(".yaml"):  # block style, one level per line
        text = CLUSTER.format(name="deep") + "    metadata:\n      filter_metadata:\n        x:\n"
        text += "".join(f"{' ' * (10 + 2 * i)}k{i}:\n" for i in range(depth)) + " " * (10 + 2 * depth) + "v: 1\n"
    with pytest.raises(ConfigError) as info:
        parse_texts([(name, text)])
    assert info.value.file == name and info.value.line is not None and "nesting" in info.value.reason


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(CLUSTER.format(name="a").encode() + b"#" * MAX_CONFIG_BYTES + b"\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load(big)
    assert "limited to" in str(info.value) and info.value.file == str(big)
    assert time.monotonic() - t0 < 5  # refused by size, not parsed (parsing it took minutes)
    half = MAX_CONFIG_BYTES // 2 + 1  # two files under the cap each, over it together
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_bytes(CLUSTER.format(name=name[0]).encode() + b"#" * half + b"\n")
    big.unlink()
    with pytest.raises(ConfigError, match="together exceed"):
        load(tmp_path)


def test_every_config_reader_applies_the_limits(tmp_path: Path) -> None:
    laughs = "a: &a [1, 1]\nb: [*a, *a]\n"
    for reader, error in ((read_yaml, HboneConfigError), (config_from_yaml, ConfigError), (load_policy, ConfigError)):
        path = tmp_path / "c.yaml"
        path.write_text(laughs)
        with pytest.raises(error, match=r"c\.yaml:2: .*alias"):
            reader(path)
        path.write_text("a:" + " [" * 150 + "]" * 150 + "\n")
        with pytest.raises(error, match=r"c\.yaml:1: nesting deeper"):
            reader(path)


async def test_watcher_survives_any_loading_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"resources": [{"@type": CDS, "name": "a", "connect_timeout": "1s"}]}))
    src = FileSource(tmp_path, interval=0.01, debounce=0.01, rescan=0.05)
    assert src.load_now() is not None
    delivered: asyncio.Queue[ConfigSnapshot] = asyncio.Queue()
    errors: asyncio.Queue[ConfigError] = asyncio.Queue()
    task = asyncio.create_task(src.run(delivered.put_nowait, errors.put_nowait))
    try:
        cfg.write_text(deep_struct(5000))  # main: RecursionError ended the watcher silently
        err = await asyncio.wait_for(errors.get(), 10)
        assert "nesting" in str(err) and src.snapshot is not None
        real = files.parse_texts

        def broken(texts: object) -> ConfigSnapshot:
            raise MemoryError("simulated")

        monkeypatch.setattr(files, "parse_texts", broken)
        cfg.write_text(CLUSTER.format(name="b"))
        err = await asyncio.wait_for(errors.get(), 10)
        assert "MemoryError" in str(err) and src.snapshot is not None
        monkeypatch.setattr(files, "parse_texts", real)
        cfg.write_text(CLUSTER.format(name="cc"))  # a later valid edit still applies
        snap = await asyncio.wait_for(delivered.get(), 10)
        assert list(snap.resources[CDS]) == ["cc"]
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
