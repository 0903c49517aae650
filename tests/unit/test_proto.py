"""The Istio proto subsets: upstream field numbers, round trips, resource naming, and the generated-code check."""

from __future__ import annotations

import importlib.util
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from microxds import resources
from microxds._pb.istio.security import authorization_pb2 as authz
from microxds._pb.istio.v1.auth import ca_pb2
from microxds._pb.istio.workload import workload_pb2 as wl

ROOT = Path(__file__).resolve().parents[2]


def _fields(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_workload_field_numbers_match_upstream() -> None:
    f = _fields(wl.Workload)
    assert f["uid"] == 20 and f["name"] == 1 and f["namespace"] == 2 and f["addresses"] == 3
    assert f["hostname"] == 21 and f["network"] == 4 and f["tunnel_protocol"] == 5
    assert f["trust_domain"] == 6 and f["service_account"] == 7 and f["waypoint"] == 8
    assert f["network_gateway"] == 19 and f["services"] == 22 and f["authorization_policies"] == 16
    assert f["application_tunnel"] == 23 and f["locality"] == 24 and f["network_mode"] == 25
    assert f["extensions"] == 26 and f["capacity"] == 27 and 15 not in f.values()
    s = _fields(wl.Service)
    assert s == {
        "name": 1,
        "namespace": 2,
        "hostname": 3,
        "addresses": 4,
        "ports": 5,
        "subject_alt_names": 6,
        "waypoint": 7,
        "load_balancing": 8,
        "ip_families": 9,
        "extensions": 10,
        "canonical": 11,
        "ingress_use_waypoint": 12,
        "weighted_waypoints": 13,
        "visibility": 14,
    }
    assert _fields(wl.GatewayAddress) == {"hostname": 1, "address": 2, "hbone_mtls_port": 3}
    assert _fields(wl.NetworkAddress) == {"network": 1, "address": 2, "length": 3}
    assert wl.TunnelProtocol.Value("HBONE") == 1 and wl.WorkloadType.Value("JOB") == 3


def test_authorization_field_numbers_match_upstream() -> None:
    assert _fields(authz.Authorization) == {
        "name": 1,
        "namespace": 2,
        "scope": 3,
        "action": 4,
        "rules": 5,
        "dry_run": 6,
        "extensions": 7,
    }
    assert _fields(authz.Clause) == {"matches": 2}
    m = _fields(authz.Match)
    assert m["service_accounts"] == 11 and m["not_destination_ports"] == 10 and m["extensions"] == 13
    assert _fields(authz.StringMatch) == {"exact": 1, "prefix": 2, "suffix": 3, "presence": 4}
    assert _fields(authz.ServiceAccountMatch) == {"namespace": 1, "serviceAccount": 2}
    assert authz.Scope.Value("WORKLOAD_SELECTOR") == 2 and authz.Action.Value("DENY") == 1


def test_ca_messages() -> None:
    assert _fields(ca_pb2.IstioCertificateRequest) == {"csr": 1, "validity_duration": 3, "metadata": 4}
    svc = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    assert svc.full_name == "istio.v1.auth.IstioCertificateService"
    assert svc.methods_by_name["CreateCertificate"].input_type.full_name == "istio.v1.auth.IstioCertificateRequest"


def _workload() -> wl.Workload:
    w = wl.Workload(
        uid="cluster1//Pod/default/alice",
        name="alice",
        namespace="default",
        addresses=[ipaddress.ip_address("10.0.0.1").packed, ipaddress.ip_address("fd00::1").packed],
        network="net1",
        tunnel_protocol=wl.HBONE,
        service_account="alice",
        authorization_policies=["default/deny-bob"],
    )
    w.services["default/echo.default.svc.cluster.local"].ports.add(service_port=80, target_port=8080)
    w.capacity.value = 3
    return w


def test_address_round_trip_and_naming() -> None:
    addr = wl.Address(workload=_workload())
    data = addr.SerializeToString(deterministic=True)
    back = wl.Address.FromString(data)
    assert back == addr
    assert back.workload.services["default/echo.default.svc.cluster.local"].ports[0].target_port == 8080
    res = resources.Resource.of(back, type_url=resources.ADDRESS)
    assert res.name == "cluster1//Pod/default/alice"
    assert resources.address_aliases(back) == ("net1/10.0.0.1", "net1/fd00::1")

    svc = wl.Address(
        service=wl.Service(
            name="echo",
            namespace="default",
            hostname="echo.default.svc.cluster.local",
            addresses=[wl.NetworkAddress(address=bytes([10, 96, 0, 1]))],
            ports=[wl.Port(service_port=80, target_port=8080, app_protocol=wl.HTTP2)],
        )
    )
    assert resources.resource_name(svc) == "default/echo.default.svc.cluster.local"
    assert resources.address_aliases(svc) == ("/10.96.0.1",)
    assert resources.resource_name(_workload()) == "cluster1//Pod/default/alice"


def test_authorization_round_trip_and_naming() -> None:
    pol = authz.Authorization(
        name="deny-bob",
        namespace="default",
        scope=authz.WORKLOAD_SELECTOR,
        action=authz.DENY,
        rules=[
            authz.Rule(
                clauses=[
                    authz.Clause(matches=[authz.Match(principals=[authz.StringMatch(suffix="/sa/bob")])]),
                    authz.Clause(matches=[authz.Match(destination_ports=[8080], not_source_ips=[authz.Address()])]),
                ]
            )
        ],
    )
    pol.rules[0].clauses[0].matches[0].not_principals.add().presence.SetInParent()
    back = authz.Authorization.FromString(pol.SerializeToString())
    assert back == pol
    assert back.rules[0].clauses[0].matches[0].not_principals[0].WhichOneof("match_type") == "presence"
    assert resources.Resource.of(back).name == "default/deny-bob"
    assert resources.Resource.of(back).type_url == resources.AUTHORIZATION


def _load_genproto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "tools" / "genproto.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_genproto_check_passes_on_committed_code() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genproto.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr


def test_genproto_check_detects_stale_code(tmp_path: Path) -> None:
    gp = _load_genproto()
    committed = tmp_path / "committed"
    shutil.copytree(ROOT / "microxds" / "_pb", committed, ignore=shutil.ignore_patterns("__pycache__"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    gp.run_protoc(fresh)
    assert gp.compare(committed, fresh) == []

    # A different generator version with the same descriptors is tolerated...
    target = committed / "istio" / "workload" / "workload_pb2.py"
    text = target.read_text()
    other_version = text.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 0.")
    target.write_text(other_version.replace("\n\n", "\n"))
    assert gp.compare(committed, fresh) == []
    # ...but a changed descriptor is not, whichever generator made it.
    target.write_text(other_version.replace("service_account", "service_acc0unt"))
    assert gp.compare(committed, fresh) == ["stale descriptor: istio/workload/workload_pb2.py"]
    target.write_text(text.replace("service_account", "service_acc0unt"))
    assert gp.compare(committed, fresh) == ["stale: istio/workload/workload_pb2.py"]
    (committed / "istio" / "extra_pb2.py").write_text("")
    assert any("extra_pb2.py" in p for p in gp.compare(committed, fresh))


@pytest.mark.parametrize("module", [wl, authz, ca_pb2])
def test_generated_modules_live_in_our_package(module: ModuleType) -> None:
    assert module.__name__.startswith("microxds._pb.istio.")
    classes = [v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "DESCRIPTOR")]
    assert classes
    assert all(c.__module__ == module.__name__ for c in classes)
