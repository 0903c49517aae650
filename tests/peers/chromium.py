"""Headless Debian `chromium` driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

No websocket client and no downloaded browser: Chromium reads NUL-terminated JSON commands on fd 3 and writes
responses and events on fd 4. `Browser.open(url)` attaches to one page; `evaluate()` runs JavaScript in it and
returns the value; `screenshot()` returns PNG bytes.
"""

# ruff: noqa: ASYNC109  (timeouts are the API of these helpers)
from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Self

from tests.peers.process import require_binary

_LAUNCH = """
import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w)
os.execv(sys.argv[3], sys.argv[3:])
"""


class Browser:
    def __init__(self) -> None:
        # The Debian wrapper script /usr/bin/chromium only adds flags; run the browser itself.
        wrapper = require_binary("chromium")
        direct = Path("/usr/lib/chromium/chromium")
        self.binary = direct if direct.exists() else wrapper
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._session: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="hbone-chromium-")

    async def __aenter__(self) -> Self:
        to_child_r, to_child_w = os.pipe()  # our commands -> chromium fd 3
        from_child_r, from_child_w = os.pipe()  # chromium fd 4 -> our responses
        args = [str(self.binary), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--remote-debugging-pipe", "--window-size=1400,470",
                f"--user-data-dir={self._profile.name}", "about:blank"]  # fmt: skip

        # Chromium expects the pipe on fds 3 and 4 exactly: a tiny Python launcher moves the inherited ends there
        # (both moved above 10 first, so neither move clobbers the other) and execs the browser.
        child_r, child_w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        for fd in (to_child_r, from_child_w):
            os.close(fd)
        shell = [sys.executable, "-c", _LAUNCH, str(child_r), str(child_w), *args]
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - a short spawn; the browser then runs on its own
                shell, pass_fds=(child_r, child_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        finally:
            os.close(child_r)
            os.close(child_w)
        self._write = os.fdopen(to_child_w, "wb", buffering=0)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_child_r, "rb"))
        self._reader = asyncio.create_task(self._read(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(OSError):
            self._write.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        self._profile.cleanup()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await reader.readuntil(b"\0")
            except asyncio.IncompleteReadError:
                for fut in self._waiters.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("chromium closed its DevTools pipe"))
                return
            msg = json.loads(raw[:-1])
            fut = self._waiters.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def send(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        """One DevTools command (on the attached page once `open()` ran); returns its `result`."""
        ident = next(self._ids)
        msg: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self._session is not None and not method.startswith("Target."):
            msg["sessionId"] = self._session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[ident] = fut
        self._write.write(json.dumps(msg).encode() + b"\0")
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open(self, url: str) -> None:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self._session = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll a JavaScript condition until it is truthy (the page itself refreshes once a second)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r}")
            await asyncio.sleep(0.1)  # polling interval of an observable, bounded by the deadline

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
