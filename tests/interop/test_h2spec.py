"""h2spec (RFC 7540/7541 conformance, 145 cases) against our HTTP/2 server stack (`hbone.net`), h2c and TLS.

The listener is `tests.peers.h2app`: the same `H2Connection` driver as every product listener, with an
application that answers any request with 200 and a body (h2spec needs `GET /` and `POST /` to succeed).

One case is run differently, on purpose: http2/4.2/3 sends a HEADERS frame of ~20 KB and expects
FRAME_SIZE_ERROR, which assumes the server's SETTINGS_MAX_FRAME_SIZE is the default 16,384. Ours is 1 MiB (as
ztunnel's), so that frame is legal (RFC 9113 §4.2: the limit is the receiver's advertised value). The case is
repeated with headers large enough (5 x 220,000 bytes) to exceed 1 MiB, and must then pass.
"""

from __future__ import annotations

import re
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, TestPKI, arun_peer, close_server
from tests.peers.gopeers import require_go_peer
from tests.peers.h2app import server_tls_context, start_h2_app

pytestmark = pytest.mark.timeout(240)
TOTAL_CASES = 145
FRAME_SIZE_CASE = "http2/4.2: Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE"
# Justified above and in the README (RFC 9113 §4.2); re-run with a frame above our limit.
EXPECTED_FAILURES = {FRAME_SIZE_CASE}


# h2spec copies a failing case's raw frame bytes into the report, which can make it invalid XML; those bytes are
# in the console output too, so they are dropped here and the report still names the failed case.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def results(report: Path) -> tuple[int, set[str]]:
    """(cases run, "package: description" of each failed case) from h2spec's JUnit report."""
    root = ET.fromstring(_NOT_XML.sub("?", report.read_bytes().decode("utf-8", "replace")))
    cases = root.findall(".//testcase")
    failed = {f"{c.get('package')}: {c.get('classname')}" for c in cases if c.find("failure") is not None}
    failed |= {f"{c.get('package')}: {c.get('classname')}" for c in cases if c.find("error") is not None}
    return len(cases), failed


# The default engine both ways; the h2 engine (still supported, and the native engine's oracle) over h2c.
@pytest.mark.parametrize(("tls", "engine"), [(False, None), (True, None), (False, "h2")], ids=["h2c", "tls", "h2c-h2"])
async def test_h2spec_against_hbone_net(tls: bool, engine: str | None, pki: TestPKI, tmp_path: Path) -> None:
    h2spec = require_go_peer("h2spec")
    ctx: ssl.SSLContext | None = None
    if tls:
        ident = pki["server"]
        ctx = server_tls_context(str(ident.cert_chain), str(ident.key))
    server, port = await start_h2_app(ctx, engine)
    try:
        base = [h2spec, "-h", LOOPBACK, "-p", str(port), "-o", "5"] + (["-t", "-k"] if tls else [])
        report = tmp_path / "h2spec.xml"
        run = await arun_peer([*base, "-j", report], timeout=200)
        assert report.is_file(), run.stdout[-3000:] + run.stderr[-2000:]
        count, failed = results(report)
        assert count == TOTAL_CASES, run.stdout[-3000:]
        assert failed <= EXPECTED_FAILURES, (
            f"h2spec failures: {sorted(failed - EXPECTED_FAILURES)}\n" + run.stdout[-6000:]
        )
        big = await arun_peer([*base, "--max-header-length", "220000", "http2/4.2/3"], timeout=60)
        assert big.returncode == 0 and "1 passed" in big.stdout, big.stdout[-3000:] + big.stderr[-2000:]
    finally:
        await close_server(server)
