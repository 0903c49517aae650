"""Identity lists never mean "anyone": an empty expected-server list is refused, the agent trusts istiod's identity
by default (ztunnel's rule), and configs or flags that would accept any server identity are refused at start."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from hbone.commands.frontends_config import FrontendsConfig
from hbone.commands.frontends_runtime import Runtime
from hbone.errors import ConfigError, PeerIdentityError
from hbone.grpc.client import Channel
from hbone.identity.spiffe import SpiffeId
from hbone.proxy.egress import EgressRule, rules_from_list
from hbone.proxy.routing import Match
from hbone.testing import TestCA
from hbone.tls import check_server_peer
from microxds.agent import Agent, AgentConfig
from microxds.errors import ConfigError as XdsConfigError
from microxds.istio.node import NodeProfile
from microxds.server.access import JwtVerifier, Unauthenticated
from tests.integration.test_xds_access import _es256_key, _token
from tools.localmesh import ISTIOD_ID, NODE_ID, LocalMesh

pytestmark = pytest.mark.timeout(60)


def test_an_empty_expected_list_is_refused() -> None:
    with pytest.raises(PeerIdentityError, match="no expected server identity configured"):
        check_server_peer(None, ())


def test_grpc_over_mesh_tls_needs_expected_identities() -> None:
    with pytest.raises(ConfigError, match="expected_identities is required"):
        Channel("127.0.0.1:1", tls=TestCA().mesh_tls("ns", "a"))


def _agent(mesh: LocalMesh) -> Agent:
    certs = mesh.write_certs("node", NODE_ID)
    profile = NodeProfile(instance_ip=mesh.ip("bob"), pod_name="ztunnel-bob", token_path=None)
    cfg = AgentConfig(xds_address=f"127.0.0.1:{mesh.xds_port}", certs=certs, profile=profile, ready_timeout=10.0)
    return Agent(cfg)  # no control_plane_identities: the default applies


async def test_agent_refuses_a_workload_posing_as_the_control_plane(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path)
    mesh.write_certs("istiod", "spiffe://cluster.local/ns/default/sa/evil")  # the plane serves a workload's cert
    await mesh.start_control_plane()
    agent = _agent(mesh)
    try:
        with pytest.raises(ConfigError, match="evil is not one of the expected " + re.escape(ISTIOD_ID)):
            await agent.start()  # main: connected, took its configuration and became ready
        assert agent.control_plane_identities() == (ISTIOD_ID,)
    finally:
        await agent.stop()
        await mesh.stop_control_plane()


async def test_agent_default_accepts_istiod(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path)
    await mesh.start_control_plane()
    agent = _agent(mesh)
    try:
        await agent.start()
        assert agent.control_plane_identities() == (ISTIOD_ID,)
    finally:
        await agent.stop()
        await mesh.stop_control_plane()


async def test_frontends_via_without_identities_is_refused_at_start(tmp_path: Path) -> None:
    certs = TestCA().write(tmp_path / "gw", "ns", "gw")
    cfg = FrontendsConfig.from_dict({"certs": str(certs), "routes": [{"name": "mesh", "via": "127.0.0.1:15008"}]})
    with pytest.raises(ConfigError, match=r"via 127\.0\.0\.1:15008 needs identities"):
        await Runtime(cfg).start()


def test_cli_with_certs_needs_expect_identity(tmp_path: Path) -> None:
    certs = TestCA().write(tmp_path / "a", "ns", "a")
    proc = subprocess.run(
        [sys.executable, "-m", "hbone.cli", "connect", "127.0.0.1:2", "--via", "127.0.0.1:1", "--certs", str(certs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--expect-identity" in proc.stderr


def test_jwt_verification_requires_issuer_and_audience(tmp_path: Path) -> None:
    key, pem = _es256_key(tmp_path)
    for kwargs in ({}, {"issuer": "test"}, {"audiences": ["microxds"]}):
        with pytest.raises(XdsConfigError, match="issuer and at least one audience"):
            JwtVerifier.from_files([pem], **kwargs)  # type: ignore[arg-type]  # main: any token the key signed
    verifier = JwtVerifier.from_files([pem], issuer="test", audiences=["microxds"])
    exp = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    no_aud = jwt.encode({"sub": "x", "iss": "test", "exp": exp}, key, algorithm="ES256")
    with pytest.raises(Unauthenticated, match="aud"):
        verifier.subject(no_aud)
    assert verifier.subject(_token(key, "ops:a")) == "ops:a"


def test_egress_rules_name_their_callers() -> None:
    rule = {"name": "gh", "match": {"hosts": ["api.github.com"], "ports": [443]}}
    with pytest.raises(ConfigError, match="callers: name the SPIFFE ids"):
        rules_from_list([rule], "allow")  # main: admitted every mesh caller
    assert not EgressRule("r", Match()).admits(SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b"))
    (everyone,) = rules_from_list([{**rule, "callers": ["spiffe://cluster.local/*"]}], "allow")
    assert everyone.admits(SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b")) and not everyone.admits(None)
