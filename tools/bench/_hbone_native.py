"""Native peers and load generators of the Envoy comparison (`hbone_envoy_bench.py`).

Envoy as HBONE client and server (one worker each, the interop tests' configs), nginx answering 200 (a native
backend for tunnel churn), iperf3 (bulk), wrk (new connections), and the parsers of their output. Everything
listens on 127.0.0.1 only; every process is started through `hbone_bench.Fleet`, which stops it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from hbone_bench import Fleet, _free_port, _wait_listening

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the Envoy config builders are shared with the interop tests (tests/peers)

from tests.peers.envoy import check_loopback, envoy_binary  # noqa: E402
from tests.peers.envoy_config import envoy_hbone_client_config, envoy_hbone_server_config  # noqa: E402

_H2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))  # nginx lives here; a user's PATH may lack it


def binary(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", os.defpath) + os.pathsep + _SBIN)
    if found is None:
        raise RuntimeError(f"{name} not found: run tools/install-peers.sh")
    return found


_base_ids = itertools.count(1)


def matched_buffers() -> dict[str, int]:
    """Our HTTP/2 windows and per-stream send buffer (hbone.net.settings defaults), for the like-for-like Envoy."""
    from hbone.net.settings import H2Settings

    s = H2Settings()
    return {
        "initial_stream_window_size": s.initial_stream_window,
        "initial_connection_window_size": s.connection_window,
        "per_connection_buffer_limit_bytes": s.max_send_buffer,
    }


def _match(h2_options: dict[str, Any], *holders: dict[str, Any]) -> None:
    m = matched_buffers()
    h2_options["initial_stream_window_size"] = m["initial_stream_window_size"]
    h2_options["initial_connection_window_size"] = m["initial_connection_window_size"]
    for holder in holders:  # listeners and clusters: Envoy's read-disable watermark per connection
        holder["per_connection_buffer_limit_bytes"] = m["per_connection_buffer_limit_bytes"]


def envoy_server(certs: Path, matched: bool) -> dict[str, Any]:
    """Envoy as the HBONE server (mTLS, h2, CONNECT → ORIGINAL_DST on :authority), listener `hbone_in`."""
    cfg = envoy_hbone_server_config(
        cert_chain=certs / "cert-chain.pem", key=certs / "key.pem", root_cert=certs / "root-cert.pem"
    )
    if matched:
        res = cfg["static_resources"]
        listener = res["listeners"][0]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        _match(hcm["http2_protocol_options"], listener, *res["clusters"])
    return cfg


def envoy_client(certs: Path, targets: dict[str, str], upstream: str, peer_san: str, matched: bool) -> dict[str, Any]:
    """Envoy as the HBONE client: one tcp_proxy listener `out-NAME` per target, all over one upstream cluster."""
    host, _, port = upstream.rpartition(":")
    listeners: list[dict[str, Any]] = []
    cluster: dict[str, Any] = {}
    for name, target in targets.items():
        cfg = envoy_hbone_client_config(
            target=target, hbone_port=int(port), hbone_host=host, cert_chain=certs / "cert-chain.pem",
            key=certs / "key.pem", root_cert=certs / "root-cert.pem", peer_san=peer_san,
            listener_name=f"out-{name}", cluster_name="hbone_upstream",
        )  # fmt: skip
        listeners += cfg["static_resources"]["listeners"]
        cluster = cfg["static_resources"]["clusters"][0]
    if matched:
        opts = cluster["typed_extension_protocol_options"][_H2_OPTIONS]["explicit_http_config"]
        _match(opts["http2_protocol_options"], cluster, *listeners)
    return {"static_resources": {"listeners": listeners, "clusters": [cluster]}}


def start_envoy(fleet: Fleet, name: str, config: dict[str, Any], timeout: float = 30.0) -> dict[str, str]:
    """Start Envoy (`--concurrency 1`) and return its listeners' addresses by name, once all are active."""
    binary = envoy_binary()
    if binary is None:
        raise RuntimeError("envoy not found: run tools/install-peers.sh or set HBONE_ENVOY")
    config = {**config, "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}}
    check_loopback(config)
    path = fleet.workdir / f"{name}.json"
    path.write_text(json.dumps(config))  # JSON is YAML: Envoy reads it as a bootstrap file
    admin_file = fleet.workdir / f"{name}.admin"
    base_id = (os.getpid() % 100_000) * 100 + next(_base_ids)
    argv = [str(binary), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "--base-id", str(base_id),
            "--log-level", "warn", "--admin-address-path", str(admin_file)]  # fmt: skip
    fleet.start(name, argv, None)
    want = {lst["name"] for lst in config["static_resources"]["listeners"]}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if name in fleet.dead():
            break
        try:
            admin = admin_file.read_text().strip()
            if admin:
                with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as resp:
                    got = _listener_addresses(json.load(resp))
                if want <= got.keys():
                    return got
                last = f"listeners so far: {sorted(got)}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.05)  # polling Envoy's admin API for its state, not synchronisation between our peers
    log = (fleet.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} did not start ({last}): {log}")


def _listener_addresses(body: dict[str, Any]) -> dict[str, str]:
    out = {}
    for entry in body.get("listener_statuses", []):
        sock = entry.get("local_address", {}).get("socket_address", {})
        if sock.get("port_value"):
            out[entry["name"]] = f"{sock['address']}:{sock['port_value']}"
    return out


def start_nginx(fleet: Fleet) -> str:
    """nginx in one process (no master, no workers to account separately), answering 200 "ok" to anything."""
    port = _free_port()
    work = fleet.workdir / "nginx"
    work.mkdir(exist_ok=True)
    temp = " ".join(f"{k}_temp_path {work / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process off; worker_processes 1; pid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; {temp}\n"
        f'  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }} }}\n'
    )
    fleet.start("nginx", [binary("nginx"), "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")], None)
    return _wait_listening(port)


def start_iperf3(fleet: Fleet) -> str:
    """iperf3 server (serves one test at a time: the cases run one after another)."""
    port = _free_port()
    argv = [binary("iperf3"), "-s", "-B", "127.0.0.1", "-p", str(port), "--forceflush"]
    return fleet.start("iperf3-s", argv, r"Server listening on (\d+)")


def wait_iperf3_idle(fleet: Fleet, timeout: float = 15.0) -> None:
    """Wait until the iperf3 server is listening for the next test: it refuses a client ("the server is busy")
    while it is still closing the previous test's connections, which go through the proxies."""
    log = fleet.workdir / "iperf3-s.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if text.rfind("Server listening on") > text.rfind("Accepted connection"):
            return
        time.sleep(0.02)  # polling the server's own log for its state
    raise RuntimeError(f"iperf3 server still busy after {timeout:.0f}s: {text[-500:]}")


def iperf3_argv(address: str, seconds: int | None, nbytes: int | None) -> list[str]:
    host, _, port = address.rpartition(":")
    amount = ["-n", str(nbytes)] if nbytes else ["-t", str(seconds)]
    return [binary("iperf3"), "-c", host, "-p", port, *amount, "-J", "--connect-timeout", "5000"]


def parse_iperf3(text: str) -> dict[str, float]:
    """Bytes the server received and over how long (its clock), from `iperf3 -J`."""
    body = json.loads(text)
    if body.get("error"):
        raise RuntimeError(f"iperf3: {body['error']}")
    got = body["end"]["sum_received"]
    return {"bytes": float(got["bytes"]), "seconds": float(got["seconds"])}


def wrk_argv(address: str, connections: int, seconds: int) -> list[str]:
    # One thread (as one worker is measured), `Connection: close`: every request is a new TCP connection, so a new
    # tunnel through the hop; nginx closes after its answer.
    return [binary("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "-H", "Connection: close", f"http://{address}/"]


_WRK_DONE = re.compile(r"(\d+) requests in ([\d.]+)(m?s|us)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> dict[str, float]:
    m = _WRK_DONE.search(text)
    if not m:
        raise RuntimeError(f"cannot parse wrk output: {text[-300:]}")
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m.group(3)]
    done, seconds = int(m.group(1)), float(m.group(2)) * scale
    bad = sum(int(x) for x in e.groups()) if (e := _WRK_ERRORS.search(text)) else 0
    non2xx = int(n.group(1)) if (n := _WRK_NON2XX.search(text)) else 0
    ok = done - non2xx
    return {"ops": float(ok), "rate": ok / seconds, "errors": float(bad + non2xx), "seconds": seconds}


def tool_versions() -> str:
    """The versions of the native peers, for the results' footnote."""
    import subprocess

    def first(argv: list[str], pattern: str) -> str:
        try:
            out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else "?"

    envoy = envoy_binary()
    found = {
        "Envoy": first([str(envoy), "--version"], r"version: \S+/(\d+\.\d+\.\d+)") if envoy else "?",
        "iperf3": first([binary("iperf3"), "--version"], r"iperf (\S+)"),
        "wrk": first([binary("wrk"), "-v"], r"wrk (\S+)"),
        "nginx": first([binary("nginx"), "-v"], r"nginx/(\S+)"),
    }
    return ", ".join(f"{k} {v}" for k, v in found.items())
