"""The protoc-gen-validate rules Envoy's protos carry, checked generically by walking message descriptors.

Envoy's API annotates fields with `(validate.rules)` (required messages, string lengths, numeric ranges, enum
`defined_only`, repeated `min_items`, ...) and oneofs with `(validate.required)`; Envoy rejects (NACKs) a resource
that breaks one. The options travel in the descriptors of the `xds-protos` modules, so one walker covers every
type, including the ones packed in `Any` (`typed_config`) when their module is installed. Sans-IO and pure: a
message in, a list of `Violation`s out. Rules read from a descriptor are cached per field.

Not checked (PGV features Envoy's API does not rely on for NACKs, or that need a regex engine we lack):
`pattern` with RE2-only syntax is skipped when Python's `re` cannot compile it; `email`/`uri` formats.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message

Step = str | int  # a field name, a list index or a map key
MAX_DEPTH = 64  # Envoy's configs nest ~15 deep; a bound keeps a hostile recursive Any from recursing forever

_WRAPPERS = {
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
}  # fmt: skip
# RFC 7230 token for header names (PGV HTTP_HEADER_NAME also admits HTTP/2 pseudo-headers) and field values.
_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_HEADER_VALUE = re.compile(r"^[^\x00\n\r]*$")


@dataclass(frozen=True, slots=True)
class Violation:
    """`path` (field names, indices, map keys from the resource's top) breaks `rule`."""

    path: tuple[Step, ...]
    rule: str

    def field_path(self) -> str:
        out = ""
        for step in self.path:
            out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
        return out or "(resource)"

    def __str__(self) -> str:
        return f"{self.field_path()}: {self.rule}"


@cache
def _extensions() -> tuple[Any, Any, Any, Any] | None:
    """(rules, required, disabled, ignored) extension handles, or None without the `validate` module."""
    try:
        from validate import validate_pb2 as v  # shipped with xds-protos
    except ImportError:
        return None
    return v.rules, v.required, v.disabled, v.ignored


@cache
def _field_rules(field: FieldDescriptor) -> Any | None:
    ext = _extensions()
    if ext is None:
        return None
    opts = field.GetOptions()
    return opts.Extensions[ext[0]] if opts.HasExtension(ext[0]) else None


@cache
def _oneof_required(oneof: OneofDescriptor) -> bool:
    ext = _extensions()
    return bool(ext is not None and oneof.GetOptions().Extensions[ext[1]])


@cache
def _message_skipped(desc: Descriptor) -> bool:
    ext = _extensions()
    if ext is None:
        return True
    opts = desc.GetOptions()
    return bool(opts.Extensions[ext[2]] or opts.Extensions[ext[3]])


def check(message: Message) -> list[Violation]:
    """Every rule `message` (and what it contains) breaks, in field order."""
    return list(_check_message(message, (), 0))


def _check_message(msg: Message, path: tuple[Step, ...], depth: int) -> Iterator[Violation]:
    desc = msg.DESCRIPTOR
    if depth > MAX_DEPTH:
        yield Violation(path, f"nested more than {MAX_DEPTH} levels deep")
        return
    if desc.full_name == "google.protobuf.Any":
        inner = _unpack(msg)
        if inner is not None:
            yield from _check_message(inner, path, depth + 1)
        return
    plan = _plan(desc)
    if plan is None:
        return
    required_oneofs, ruled, ruled_set = plan
    for oneof in required_oneofs:
        if msg.WhichOneof(oneof.name) is None:
            names = ", ".join(f.name for f in oneof.fields)
            yield Violation(path, f"one of {names} is required")
    for field in ruled:  # checked set or not: an unset string still breaks min_len
        oneof = field.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) != field.name:
            continue  # a oneof member's rules apply only when it is the member that is set
        yield from _check_field(msg, field, (*path, field.name), depth)
    for field, value in msg.ListFields():  # rule-less message fields: only the set ones, only if rules lie below
        if field.type != FieldDescriptor.TYPE_MESSAGE or field in ruled_set or not _may_have_rules(field.message_type):
            continue
        sub = (*path, field.name)
        if field.message_type.GetOptions().map_entry:
            yield from _check_map(field, value, None, sub, depth)
        elif _repeated(field):
            for i, item in enumerate(value):
                yield from _check_message(item, (*sub, i), depth + 1)
        else:
            yield from _check_message(value, sub, depth + 1)


@cache
def _plan(
    desc: Descriptor,
) -> tuple[tuple[OneofDescriptor, ...], tuple[FieldDescriptor, ...], frozenset[FieldDescriptor]] | None:
    """(required oneofs, fields carrying rules in field order, the same as a set); None when the type is exempt."""
    if _message_skipped(desc):
        return None
    ruled = tuple(f for f in desc.fields if _field_rules(f) is not None)
    return tuple(o for o in desc.oneofs if _oneof_required(o)), ruled, frozenset(ruled)


_MAY_HAVE_RULES: dict[str, bool] = {}


def _may_have_rules(desc: Descriptor) -> bool:
    """Whether a message type, or anything it can contain, carries a rule (Any: its content might)."""
    if desc.full_name == "google.protobuf.Any":
        return True
    known = _MAY_HAVE_RULES.get(desc.full_name)
    if known is not None:
        return known
    _MAY_HAVE_RULES[desc.full_name] = True  # provisional while recursing: a cycle counts as "maybe"
    plan = _plan(desc)
    result = plan is not None and (
        bool(plan[0] or plan[1])
        or any(f.type == FieldDescriptor.TYPE_MESSAGE and _may_have_rules(f.message_type) for f in desc.fields)
    )
    _MAY_HAVE_RULES[desc.full_name] = result
    return result


def _unpack(packed: Any) -> Message | None:
    type_url: str = packed.type_url
    name = type_url.rsplit("/", 1)[-1]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None  # a type we have no module for: Envoy checks it, we cannot
    from google.protobuf import message_factory

    inner = message_factory.GetMessageClass(desc)()
    try:
        inner.ParseFromString(packed.value)
    except Exception:  # a malformed Any is Envoy's to report, whatever protobuf raises
        return None
    return inner


@cache
def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` before (and deprecated since)
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _is_set(msg: Message, field: FieldDescriptor) -> bool:
    if _repeated(field):
        return len(getattr(msg, field.name)) > 0
    if field.has_presence:
        return bool(msg.HasField(field.name))
    return bool(getattr(msg, field.name))


def _check_field(msg: Message, field: FieldDescriptor, path: tuple[Step, ...], depth: int) -> Iterator[Violation]:
    rules = _field_rules(field)  # not None: only ruled fields come here
    value = getattr(msg, field.name)
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if _repeated(field):
        if is_message and field.message_type.GetOptions().map_entry:
            yield from _check_map(field, value, rules, path, depth)
            return
        if rules is not None and rules.HasField("repeated"):
            yield from _check_repeated(field, value, rules.repeated, path, depth)
        elif is_message:
            for i, item in enumerate(value):
                yield from _check_message(item, (*path, i), depth + 1)
        return
    if is_message:
        present = msg.HasField(field.name)
        if rules is not None:
            if rules.message.required and not present:
                yield Violation(path, "is required")
                return
            if rules.message.skip:
                return
        if not present:
            return
        if rules is not None:
            yield from _check_value(field, value, rules, path)
        if field.message_type.full_name not in _WRAPPERS:
            yield from _check_message(value, path, depth + 1)
        return
    if rules is not None:
        yield from _check_value(field, value, rules, path, present=_is_set(msg, field))


def _check_repeated(
    field: FieldDescriptor, values: Sequence[Any], rep: Any, path: tuple[Step, ...], depth: int
) -> Iterator[Violation]:
    n = len(values)
    if rep.ignore_empty and n == 0:
        return
    if rep.HasField("min_items") and n < rep.min_items:
        yield Violation(path, f"needs at least {rep.min_items} item(s), has {n}")
    if rep.HasField("max_items") and n > rep.max_items:
        yield Violation(path, f"allows at most {rep.max_items} item(s), has {n}")
    if rep.unique and field.type != FieldDescriptor.TYPE_MESSAGE and len(set(values)) != n:
        yield Violation(path, "items must be unique")
    item_rules = rep.items if rep.HasField("items") else None
    for i, item in enumerate(values):
        if item_rules is not None:
            yield from _check_value(field, item, item_rules, (*path, i))
        if field.type == FieldDescriptor.TYPE_MESSAGE and not (item_rules is not None and item_rules.message.skip):
            yield from _check_message(item, (*path, i), depth + 1)


def _check_map(
    field: FieldDescriptor, mapping: Any, rules: Any | None, path: tuple[Step, ...], depth: int
) -> Iterator[Violation]:
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    m = rules.map if rules is not None and rules.HasField("map") else None
    if m is not None and not (m.ignore_empty and len(mapping) == 0):
        if m.HasField("min_pairs") and len(mapping) < m.min_pairs:
            yield Violation(path, f"needs at least {m.min_pairs} entr(ies), has {len(mapping)}")
        if m.HasField("max_pairs") and len(mapping) > m.max_pairs:
            yield Violation(path, f"allows at most {m.max_pairs} entr(ies), has {len(mapping)}")
    for key in sorted(mapping):
        value = mapping[key]
        if m is not None and m.HasField("keys"):
            yield from _check_value(key_field, key, m.keys, (*path, key))
        if m is not None and m.HasField("values"):
            yield from _check_value(value_field, value, m.values, (*path, key))
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _check_message(value, (*path, key), depth + 1)


def _check_value(
    field: FieldDescriptor, value: Any, rules: Any, path: tuple[Step, ...], *, present: bool = True
) -> Iterator[Violation]:
    """One field value against its FieldRules (the oneof in `rules.type` says which kind)."""
    kind = rules.WhichOneof("type")
    if kind is None or kind == "message":
        return
    r = getattr(rules, kind)
    if kind in ("duration", "timestamp"):
        if r.required and not present:
            yield Violation(path, "is required")
        if present and kind == "duration":
            yield from _numeric(_seconds(value), r, path, _seconds)
        return
    if kind == "any":
        if r.required and not present:
            yield Violation(path, "is required")
        elif present and (_in(r) or r.not_in):
            url = value.type_url
            if _in(r) and url not in _in(r):
                yield Violation(path, f"type {url!r} is not one of {', '.join(_in(r))}")
            if url in r.not_in:
                yield Violation(path, f"type {url!r} is not allowed here")
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name in _WRAPPERS:
        value = value.value  # rules on a wrapper apply to the value it wraps
    if kind == "string":
        yield from _string(value, r, path)
    elif kind == "bytes":
        yield from _bytes(value, r, path)
    elif kind == "enum":
        yield from _enum(field, value, r, path)
    elif kind == "bool":
        if r.HasField("const") and value != r.const:
            yield Violation(path, f"must be {str(r.const).lower()}")
    elif kind in ("repeated", "map"):
        return  # handled by the caller, which sees the whole container
    elif not (getattr(r, "ignore_empty", False) and not value):
        yield from _numeric(value, r, path, None)


def _in(r: Any) -> Any:
    return getattr(r, "in")  # `in` is a Python keyword: the generated attribute is only reachable this way


def _seconds(d: Any) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _numeric(value: float, r: Any, path: tuple[Step, ...], conv: Any) -> Iterator[Violation]:
    def bound(name: str) -> float | None:
        if not r.HasField(name):
            return None
        b = getattr(r, name)
        return float(conv(b)) if conv is not None else float(b)

    unit = "s" if conv is not None else ""
    const = bound("const")
    if const is not None and value != const:
        yield Violation(path, f"must be {_fmt(const)}{unit}")
    lo_ex, lo_in, hi_ex, hi_in = bound("gt"), bound("gte"), bound("lt"), bound("lte")
    lo, lo_ok = (lo_ex, value > lo_ex) if lo_ex is not None else (lo_in, lo_in is None or value >= lo_in)
    hi, hi_ok = (hi_ex, value < hi_ex) if hi_ex is not None else (hi_in, hi_in is None or value <= hi_in)
    if isinstance(value, float) and math.isnan(value):
        lo_ok = hi_ok = False
    lo_txt = f"{'>' if lo_ex is not None else '>='} {_fmt(lo)}{unit}" if lo is not None else ""
    hi_txt = f"{'<' if hi_ex is not None else '<='} {_fmt(hi)}{unit}" if hi is not None else ""
    if lo is not None and hi is not None and lo > hi:  # PGV: gt > lt means "outside the range"
        if not (lo_ok or hi_ok):
            yield Violation(path, f"must be {lo_txt} or {hi_txt}, got {_fmt(value)}{unit}")
    elif not (lo_ok and hi_ok):
        yield Violation(path, f"must be {' and '.join(t for t in (lo_txt, hi_txt) if t)}, got {_fmt(value)}{unit}")
    if conv is None:
        if _in(r) and value not in _in(r):
            yield Violation(path, f"must be one of {', '.join(_fmt(x) for x in _in(r))}")
        if value in r.not_in:
            yield Violation(path, f"must not be {_fmt(value)}")


def _string(value: str, r: Any, path: tuple[Step, ...]) -> Iterator[Violation]:
    if r.ignore_empty and not value:
        return
    n, nbytes = len(value), len(value.encode())
    checks: tuple[tuple[str, Callable[[], bool], Callable[[], str]], ...] = (
        ("const", lambda: value == r.const, lambda: f"must be {r.const!r}"),
        ("len", lambda: n == r.len, lambda: f"must be {r.len} characters long"),
        ("min_len", lambda: n >= r.min_len, lambda: "must not be empty" if r.min_len == 1 else
            f"must be at least {r.min_len} characters long"),
        ("max_len", lambda: n <= r.max_len, lambda: f"must be at most {r.max_len} characters long"),
        ("min_bytes", lambda: nbytes >= r.min_bytes, lambda: f"must be at least {r.min_bytes} bytes long"),
        ("max_bytes", lambda: nbytes <= r.max_bytes, lambda: f"must be at most {r.max_bytes} bytes long"),
        ("prefix", lambda: value.startswith(r.prefix), lambda: f"must start with {r.prefix!r}"),
        ("suffix", lambda: value.endswith(r.suffix), lambda: f"must end with {r.suffix!r}"),
        ("contains", lambda: r.contains in value, lambda: f"must contain {r.contains!r}"),
        ("not_contains", lambda: r.not_contains not in value, lambda: f"must not contain {r.not_contains!r}"),
    )  # fmt: skip
    for name, ok, text in checks:
        if r.HasField(name) and not ok():
            yield Violation(path, text())
    if _in(r) and value not in _in(r):
        yield Violation(path, f"must be one of {', '.join(_in(r))}")
    if value in r.not_in:
        yield Violation(path, f"must not be {value!r}")
    if r.HasField("pattern"):
        rx = _regex(r.pattern)
        if rx is not None and rx.search(value) is None:
            yield Violation(path, f"must match {r.pattern!r}")
    fmt = r.WhichOneof("well_known")
    if fmt is not None:
        bad = _well_known(fmt, value, r)
        if bad:
            yield Violation(path, bad)


@cache
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # RE2-only syntax: Envoy checks it


def _well_known(fmt: str, value: str, r: Any) -> str | None:
    if fmt in ("ip", "ipv4", "ipv6"):
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return "must be an IP address"
        if fmt not in ("ip", f"ipv{ip.version}"):
            return f"must be an IPv{fmt[-1]} address"
    elif fmt == "well_known_regex":
        header = r.well_known_regex  # 1 = HTTP_HEADER_NAME, 2 = HTTP_HEADER_VALUE (strict by default)
        if header == 1 and not _HEADER_NAME.match(value):
            return "must be a valid HTTP header name"
        if header == 2 and r.strict and not _HEADER_VALUE.match(value):
            return "must be a valid HTTP header value (no NUL, CR or LF)"
    return None


def _bytes(value: bytes, r: Any, path: tuple[Step, ...]) -> Iterator[Violation]:
    if r.ignore_empty and not value:
        return
    if r.HasField("min_len") and len(value) < r.min_len:
        yield Violation(path, f"must be at least {r.min_len} bytes long")
    if r.HasField("max_len") and len(value) > r.max_len:
        yield Violation(path, f"must be at most {r.max_len} bytes long")
    if r.HasField("len") and len(value) != r.len:
        yield Violation(path, f"must be {r.len} bytes long")


def _enum(field: FieldDescriptor, value: int, r: Any, path: tuple[Step, ...]) -> Iterator[Violation]:
    if r.defined_only and value not in field.enum_type.values_by_number:
        yield Violation(path, f"{value} is not a defined {field.enum_type.name} value")
    if r.HasField("const") and value != r.const:
        yield Violation(path, f"must be {r.const}")
    if _in(r) and value not in _in(r):
        yield Violation(path, f"must be one of {', '.join(map(str, _in(r)))}")
    if value in r.not_in:
        yield Violation(path, f"must not be {value}")
