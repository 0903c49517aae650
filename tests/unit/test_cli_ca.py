"""`hbone ca init|issue` and `hbone cert show`, run in-process."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hbone.cli import main
from hbone.identity import load_bundle


def test_init_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca), "--trust-domain", "example.org", "--intermediate"]) == 0
    out = tmp_path / "w"
    spiffe = "spiffe://example.org/ns/shop/sa/cart"
    assert (
        main(
            [
                "ca",
                "issue",
                "--ca-dir",
                str(ca),
                "--spiffe",
                spiffe,
                "--out",
                str(out),
                "--ttl",
                "2h",
                "--dns",
                "cart.local",
            ]
        )
        == 0
    )
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    bundle = load_bundle(out)
    assert str(bundle.identity) == spiffe
    assert (bundle.not_after - bundle.not_before).total_seconds() == pytest.approx(2 * 3600, abs=2)
    capsys.readouterr()
    assert main(["cert", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["chain"][0]["identity"] == spiffe
    assert "DNS:cart.local" in shown["chain"][0]["sans"]
    assert shown["chain"][1]["ca"] is True
    assert main(["cert", "show", str(out)]) == 0
    assert "issuer:" in capsys.readouterr().out


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca)]) == 0
    assert main(["ca", "init", "--dir", str(ca)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "ca",
                "issue",
                "--ca-dir",
                str(ca),
                "--spiffe",
                "spiffe://other.td/ns/a/sa/b",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "not in the CA's trust domain" in capsys.readouterr().err
    assert main(["ca", "issue", "--ca-dir", str(ca), "--spiffe", "http://nope", "--out", str(tmp_path / "x")]) == 2
    assert "must start with 'spiffe://'" in capsys.readouterr().err
    assert (
        main(
            [
                "ca",
                "issue",
                "--ca-dir",
                str(tmp_path / "missing"),
                "--spiffe",
                "spiffe://cluster.local/ns/a/sa/b",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "ca",
                "issue",
                "--ca-dir",
                str(ca),
                "--spiffe",
                "spiffe://cluster.local/ns/a/sa/b",
                "--out",
                "o",
                "--ttl",
                "soon",
            ]
        )


def test_demo_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dir", str(tmp_path / "mesh"), "--message", "ping"]) == 0
    out = capsys.readouterr().out
    assert "alice:   echo 'ping'" in out
    assert "server identity spiffe://cluster.local/ns/default/sa/bob" in out
    assert "mallory: CONNECT" in out and "-> 401" in out
