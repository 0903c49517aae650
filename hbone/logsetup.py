"""Logging for every command, in one place: `text` or `json` lines, access records as bare JSON objects.

Access records (`hbone.access`, one per tunnel) are logged at INFO whatever the verbosity, and always as one
JSON object on its own line with no text prefix, so a log shipper can parse them in either format. With
`--log-format json` every other line is a JSON object too (`time`, `level`, `logger`, `message`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import threading
import time
from typing import Any, TextIO

from hbone.errors import ConfigError

FORMATS = ("text", "json")
LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
          "off": logging.CRITICAL + 10}  # fmt: skip
ACCESS_LOGGER = "hbone.access"


def _time(record: logging.LogRecord) -> str:
    return _stamp(record.created)


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _stamp(created: float) -> str:
    """`created` (seconds since the epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the text of
    `datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")` (microseconds rounded half-even first,
    as datetime does, then truncated to milliseconds), with the date and time formatted once per second: the
    access log writes one line per tunnel."""
    global _second
    frac, whole = math.modf(created)
    us, sec = round(frac * 1e6), int(whole)
    if us >= 1_000_000:
        us, sec = us - 1_000_000, sec + 1
    elif us < 0:
        us, sec = us + 1_000_000, sec - 1
    if _second[0] != sec:
        _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_second[1]}.{us // 1000:03d}Z"


class LineFormatter(logging.Formatter):
    """`text`: `TIME LEVEL logger: message`; `json`: one object per line. Access records: bare JSON either way."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        access: Any = getattr(record, "access", None)
        if isinstance(access, dict):
            # The message already is the record's JSON object (accesslog): prepend the time, do not encode twice.
            message = record.getMessage()
            if message.startswith("{") and len(message) > 2:
                return f'{{"time":"{_time(record)}",{message[1:]}'
            return json.dumps({"time": _time(record), **access}, separators=(",", ":"), default=str)
        if not self.json:
            return super().format(record)
        out: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so a second `configure()` (in-process callers, tests) replaces it instead of adding another.

    Access records written on a running event loop are gathered and written once per loop iteration: one `write`
    system call per record was ~10% of a proxy's read/write calls per tunnel (stderr is line-buffered). Every other
    line, `flush()` and `close()` write the gathered records first, so the order of lines is kept; at exit
    `logging.shutdown()` flushes. A record waits at most one loop iteration (Envoy buffers its access logs for up
    to a second)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        # The loop whose iteration flushes `_pending`, and its thread: checking them is two C calls, where
        # `asyncio.get_running_loop()` makes a getpid system call each time (its fork check).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def write_access(self, message: str) -> bool:
        """Write an access record (`message`: its JSON object) as `handle()` would through `LineFormatter`, without
        building a `LogRecord`: logging's machinery (record, caller lookup, filters, formatting) was two thirds of
        an access record's ~27 us, one record per tunnel in each proxy. False, having written nothing, when this
        handler would treat it differently (a filter, a level above INFO, another formatter)."""
        if self.filters or self.level > logging.INFO or type(self.formatter) is not LineFormatter:
            return False
        if not (message.startswith("{") and len(message) > 2):
            return False
        line = f'{{"time":"{_stamp(time.time())}",{message[1:]}{self.terminator}'
        loop = self._running_loop()
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if loop is not None:
                self._pending.append(line)
                if len(self._pending) == 1:
                    loop.call_soon(self._write_pending)
                return True
            self._write_lines([line], message)
        return True

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._loop
        if loop is not None and loop.is_running() and threading.get_ident() == self._thread:
            return loop  # one loop runs per thread at a time: this one is the caller's
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._loop, self._thread = loop, threading.get_ident()
        return loop

    def _write_pending(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._pending = self._pending, []
            if lines:
                self._write_lines(lines, lines[0].rstrip())

    def _write_lines(self, lines: list[str], report: str) -> None:
        try:
            self.stream.write("".join(lines))
            super().flush()
        except RecursionError:
            raise
        except Exception:  # reported the way emit() reports it, never raised into the tunnel's code
            fields = {"name": ACCESS_LOGGER, "msg": report, "levelno": logging.INFO, "levelname": "INFO"}
            self.handleError(logging.makeLogRecord(fields))

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self._write_pending()
        super().emit(record)

    def flush(self) -> None:
        if self._pending:
            self._write_pending()
        super().flush()

    def close(self) -> None:
        self.flush()
        super().close()


def configure(level: int, fmt: str = "text", stream: TextIO | None = None) -> None:
    """One stderr handler on the root logger with `fmt`, access logs at INFO.

    Like `logging.basicConfig`, it leaves a root logger alone that already has someone else's handlers (an
    embedding application, pytest's capture): only the access logger's level is set then."""
    if fmt not in FORMATS:
        raise ConfigError(f"--log-format {fmt!r}: use text or json")
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    if access.level == logging.NOTSET or access.level > logging.INFO:
        access.setLevel(min(level, logging.INFO))
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(LineFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


def parse_level(text: str) -> int:
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise ConfigError(f"unknown log level {text!r}: use one of {', '.join(LEVELS)}")
    return level


def set_levels(spec: str) -> dict[str, str]:
    """ztunnel's `/logging?level=`: `LEVEL` for the root logger, or `LOGGER=LEVEL[,LOGGER=LEVEL]` per logger.

    Returns the levels now in force (root and every logger set explicitly under hbone/microxds)."""
    for part in (p for p in spec.split(",") if p.strip()):
        name, eq, value = part.rpartition("=")
        logger = logging.getLogger(name.strip() if eq and name.strip() else None)
        logger.setLevel(parse_level(value))
    return current_levels()


def current_levels() -> dict[str, str]:
    levels = {"root": logging.getLevelName(logging.getLogger().level).lower()}
    for name, logger in sorted(logging.Logger.manager.loggerDict.items()):
        if (
            isinstance(logger, logging.Logger)
            and logger.level != logging.NOTSET
            and name.startswith(("hbone", "microxds"))
        ):
            levels[name] = logging.getLevelName(logger.level).lower()
    return levels


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    """`--log-format` on a top-level parser: `hbone --log-format json serve …` (it applies to every command)."""
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="log lines: text or json (default text)")
