"""Config text values (`hbone.configtext`): durations, sizes, integers, listen and target addresses as a config file
or a flag can spell them. Only `TextError` may come out; values are in range, and the reason is one line."""

from __future__ import annotations

import math

from hbone.configtext import MAX_DURATION, TextError, duration_text, int_text, listen_text, size_text, target_text
from tests.fuzz.harness import Bytes, Harness, pack, text_of

_PARSERS = (duration_text, size_text, int_text, listen_text, target_text)


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack); these parsers are not incremental
    text = text_of(b.rest(), opts >> 3)
    parse = _PARSERS[opts % len(_PARSERS)]
    try:
        value = parse(text)
    except TextError as e:
        assert "\n" not in str(e) or "\n" in text, "a reason spans lines"
        return
    if parse is duration_text:
        assert isinstance(value, float) and 0 <= value <= MAX_DURATION and not math.isnan(value), value
    elif parse is size_text:
        assert isinstance(value, int) and value >= 0, value
    elif parse in (listen_text, target_text):
        assert parse(str(value)) == value, (text, value)  # an address prints back to itself


def seeds() -> dict[str, bytes]:
    cases = {
        "duration": (0, "1m30s"), "duration-ms": (0, "250ms"), "duration-bare": (0, "10"), "duration-neg": (0, "-1s"),
        "duration-huge": (0, "99999999999d"), "size": (1, "64KiB"), "size-frac": (1, "1.5MiB"),
        "size-case": (1, "1mib"), "size-digits": (1, "9" * 400 + "MiB"),
        "int-hex": (2, "0x539"), "listen": (3, ":15008"), "listen-v6": (3, "[::1]:0"), "target": (4, "echo.ns:80"),
        "target-v6": (4, "[fd00::1]:15008"), "target-unicode-digit": (4, "a:\u00b2"),
    }  # fmt: skip
    return {k: pack(bytes([kind]), text.encode()) for k, (kind, text) in cases.items()}


HARNESS = Harness("configtext", run, (TextError,), seeds, max_len=512)
