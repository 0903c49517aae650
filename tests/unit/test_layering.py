"""The import structure of `hbone` and `microxds`: packages in layers, arrows only downwards, no circles.

The graph is read from the source with `ast` (nothing is imported). An arrow is any `import` or `from … import`
naming one of our modules, wherever it stands:
- at module level;
- inside a function or method (a deferred import is still a dependency; deferring one is how a circle hides);
- under `if TYPE_CHECKING:` — counted like any other. A type-only import of an upper layer still means the lower
  code knows the upper one; declare a small Protocol low instead. A type-only back reference inside a package
  closes a circle just the same (it is how the old mixin driver's circle was spelled);
- `importlib.import_module("literal")`. Computed names (the CLIs' command registries) are not followed.
Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`; those implicit parent imports are not arrows (the
`hbone` facade loads its API lazily, and a package's own `__init__` belongs to the package).

A *unit* is a package directly under `hbone`/`microxds` (`hbone.net`, with `hbone.net.h2` inside it) or a top-level
module (`hbone.errors`); the `hbone` and `microxds` facades are units of their own. `docs/architecture.md` explains
the layers. Run this file directly to print the unit graph: `.venv/bin/python tests/unit/test_layering.py`.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hbone", "microxds")

#: Lowest first. An arrow may point within its layer or to any lower one; a new unit must be placed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hbone.errors",),
    ("hbone.limits", "hbone.logsetup", "hbone.safeyaml"),
    ("hbone.net",),  # the floor every connection stands on: sockets, the HTTP/2 engine, streams, pool
    ("hbone.identity", "hbone.wire"),
    ("hbone.tls", "hbone.authz", "hbone.configtext"),
    ("hbone.server", "hbone.client", "hbone.state", "hbone.testing"),
    ("hbone.grpc",),
    ("hbone.proxy",),
    ("hbone.admin",),
    ("hbone.config",),
    ("hbone.mesh", "hbone.commands"),
    ("hbone.cli", "hbone"),
    # microxds stands on hbone: every microxds layer is above every hbone layer.
    ("microxds.errors", "microxds._pb"),
    ("microxds.resources", "microxds.protoreg", "microxds.etcd"),
    ("microxds.cache", "microxds.istio"),
    ("microxds.client",),
    ("microxds.sources",),
    ("microxds.server", "microxds.controlplane", "microxds.store", "microxds.validate"),
    ("microxds.bootstrap", "microxds.agent"),
    ("microxds.agent_admin", "microxds.mesh"),
    ("microxds.commands",),
    ("microxds.cli", "microxds"),
)


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    line: int
    kind: str  # "module", "function" or "type" (under TYPE_CHECKING)

    def __str__(self) -> str:
        where = "" if self.kind == "module" else f" ({self.kind}-level)"
        return f"{self.source}:{self.line} -> {self.target}{where}"


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of our packages (a package is its `__init__`)."""
    out: dict[str, Path] = {}
    for top in PACKAGES:
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        block = getattr(stmt, name, None)
        if isinstance(block, list):
            yield block
    for holder in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):
        yield holder.body


def _known(name: str, modules: Mapping[str, Path]) -> str:
    """The deepest of our modules that `name` (a dotted path, maybe ending in an attribute) lands in; a foreign
    name (`asyncio`, `h2.connection`) is returned as it is."""
    ours = name
    while ours and ours not in modules:
        ours = ours.rpartition(".")[0]
    return ours or name


def module_arrows(name: str, source: str | bytes, modules: Mapping[str, Path], *, package: bool) -> list[Arrow]:
    """Every arrow out of one module's source (`package`: the source is an `__init__`), foreign ones included."""
    tree = ast.parse(source)
    here = name if package else name.rpartition(".")[0]
    arrows: list[Arrow] = []

    def add(target: str, node: ast.AST, kind: str) -> None:
        if target and target != name:
            arrows.append(Arrow(name, target, getattr(node, "lineno", 0), kind))

    def visit(body: Iterable[ast.stmt], kind: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    add(_known(alias.name, modules), stmt, kind)
            elif isinstance(stmt, ast.ImportFrom):
                if stmt.level:
                    base = here.split(".")[: len(here.split(".")) - (stmt.level - 1)]
                    origin = ".".join([*base, stmt.module] if stmt.module else base)
                else:
                    origin = stmt.module or ""
                for alias in stmt.names:
                    sub = f"{origin}.{alias.name}"
                    add(sub if sub in modules else _known(origin, modules), stmt, kind)
            elif isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
                visit(stmt.body, "type")
                visit(stmt.orelse, kind)
            else:
                inner = (
                    "function"
                    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and kind == "module"
                    else kind
                )
                for block in _blocks(stmt):
                    visit(block, inner)

    visit(tree.body, "module")
    if b"import_module" in (source if isinstance(source, bytes) else source.encode()):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                add(_known(node.args[0].value, modules), node, "function")
    return arrows


@functools.cache
def every_arrow() -> tuple[Arrow, ...]:
    modules = find_modules()
    arrows: list[Arrow] = []
    for name, path in sorted(modules.items()):
        arrows += module_arrows(name, path.read_bytes(), modules, package=path.name == "__init__.py")
    return tuple(dict.fromkeys(arrows))  # `from m import a, b` is one arrow


def graph() -> tuple[Arrow, ...]:
    """The arrows between our own modules."""
    return tuple(a for a in every_arrow() if a.target.partition(".")[0] in PACKAGES)


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def layer_of() -> dict[str, int]:
    return {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def circles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def unit_edges(arrows: Iterable[Arrow]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for a in arrows:
        src, dst = unit_of(a.source), unit_of(a.target)
        if src != dst:
            edges.setdefault(src, set()).add(dst)
    return edges


def _explain(component: list[str], arrows: Iterable[Arrow], unit: bool) -> str:
    members = set(component)
    key = unit_of if unit else (lambda m: m)
    inside = [
        str(a)
        for a in arrows
        if key(a.source) in members and key(a.target) in members and key(a.source) != key(a.target)
    ]
    return f"{' <-> '.join(component)}:\n    " + "\n    ".join(sorted(inside))


# --- the rules ----------------------------------------------------------------------------------------------------


def test_every_unit_has_a_layer() -> None:
    layers = layer_of()
    missing = sorted({unit_of(m) for m in find_modules()} - set(layers))
    assert not missing, f"place these in LAYERS (tests/unit/test_layering.py) and docs/architecture.md: {missing}"
    assert len(layers) == sum(len(layer) for layer in LAYERS), "a unit is listed in two layers"


def test_the_architecture_page_places_every_unit() -> None:
    """docs/architecture.md's "Layers" section names every unit (as `net`, `configtext`, …), so the page stays true."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("\n## Layers")
    section = text[start : text.index("\n## ", start + 1)]
    missing = [
        unit for layer in LAYERS for unit in layer if "." in unit and f"`{unit.split('.', 1)[1]}`" not in section
    ]
    assert not missing, f"add these to the Layers section of docs/architecture.md: {missing}"


def test_no_arrow_points_up() -> None:
    layers = layer_of()
    up = [
        f"{a}  (layer {layers[unit_of(a.source)]} -> {layers[unit_of(a.target)]})"
        for a in graph()
        if layers[unit_of(a.target)] > layers[unit_of(a.source)]
    ]
    assert not up, "arrows to a higher layer (move the shared piece down, or pass a callable in):\n" + "\n".join(up)


def test_no_circles_between_units() -> None:
    found = circles(unit_edges(graph()))
    assert not found, "\n".join(_explain(c, graph(), unit=True) for c in found)


def test_no_module_circles_inside_a_unit() -> None:
    edges: dict[str, set[str]] = {}
    for a in graph():
        if unit_of(a.source) == unit_of(a.target):
            edges.setdefault(a.source, set()).add(a.target)
    found = circles(edges)
    assert not found, "\n".join(_explain(c, graph(), unit=False) for c in found)


#: Sans-IO cores: bytes and values in, bytes and values out; an asyncio shell elsewhere drives them.
SANS_IO = (
    "hbone.wire",
    "hbone.authz",
    "hbone.configtext",
    "hbone.state",
    "hbone.net.h2",
    "hbone.grpc.framing",
    "hbone.grpc.status",
    "hbone.grpc.metadata",
    "hbone.grpc.codec",
    "microxds.client.state",
    "microxds.cache",
    "microxds.server.subscription",
)
IO_MODULES = ("asyncio", "socket", "selectors", "uvloop")


def test_sans_io_cores_do_no_io() -> None:
    found = [
        str(a)
        for a in every_arrow()
        if a.target.partition(".")[0] in IO_MODULES
        and any(a.source == core or a.source.startswith(core + ".") for core in SANS_IO)
    ]
    assert not found, "a sans-IO core imports an I/O module (take the loop, socket or callback from the caller):\n" + (
        "\n".join(found)
    )


def test_only_the_engine_imports_the_http2_libraries() -> None:
    """h2, hyperframe and hpack stay behind the engine interface in hbone/net/h2/ (its `api` is what others use)."""
    found = [
        str(a)
        for a in every_arrow()
        if a.target.partition(".")[0] in ("h2", "hyperframe", "hpack") and not a.source.startswith("hbone.net.h2.")
    ]
    assert not found, "HTTP/2 library imported outside hbone/net/h2/:\n" + "\n".join(found)


def test_hbone_net_is_a_floor() -> None:
    """hbone/net stands on the error tree and the limit counters only (checked by name, so the layer table above
    cannot quietly lower it)."""
    below = {unit_of(a.target) for a in graph() if unit_of(a.source) == "hbone.net"} - {"hbone.net"}
    assert below <= {"hbone.errors", "hbone.limits"}, below


# --- the reader itself: it must see what it claims to see ----------------------------------------------------------


def test_reader_sees_every_kind_of_import() -> None:
    modules = {m: Path() for m in ("p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.f", "p.sub", "p.sub.g")}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import p.a\n"
        "from . import b\n"
        "from .sub import g, not_a_module\n"
        "if TYPE_CHECKING:\n"
        "    from p.c import Thing\n"
        "else:\n"
        "    import p.f\n"
        "class K:\n"
        "    async def m(self):\n"
        "        try:\n"
        "            from p.d import x\n"
        "        except ImportError:\n"
        "            pass\n"
        "def f():\n"
        "    import importlib\n"
        "    return importlib.import_module('p.e')\n"
    )
    found = {(a.target, a.kind) for a in module_arrows("p.h", source, modules, package=False) if a.target[0] == "p"}
    assert found == {
        ("p.a", "module"),
        ("p.b", "module"),
        ("p.sub.g", "module"),
        ("p.sub", "module"),  # `not_a_module` is a name in p.sub: the arrow goes to the package
        ("p.c", "type"),
        ("p.f", "module"),
        ("p.d", "function"),
        ("p.e", "function"),
    }


def test_reader_resolves_relative_imports_in_a_package_init() -> None:
    modules = {m: Path() for m in ("p", "p.q", "p.q.r", "p.s")}
    source = "from . import r\nfrom .. import s\nimport asyncio.events\n"
    found = {a.target for a in module_arrows("p.q", source, modules, package=True)}
    assert found == {"p.q.r", "p.s", "asyncio.events"}  # a foreign name is kept as written


def test_circles_are_found() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_real_graph_has_the_known_arrows() -> None:
    arrows = {(unit_of(a.source), unit_of(a.target)) for a in graph()}
    assert ("hbone.client", "hbone.net") in arrows
    assert ("microxds.server", "hbone.grpc") in arrows


def print_graph() -> None:
    layers = layer_of()
    edges = unit_edges(graph())
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            below = sorted(edges.get(unit, ()), key=lambda u: (-layers.get(u, -1), u))
            print(f"{i:2} {unit:24} -> {', '.join(below)}")


if __name__ == "__main__":
    sys.exit(print_graph())
