"""Unit tests for ``bastion pki`` (``cli/pki.py``) through click's CliRunner.

The commands write real files into pytest's temporary directory; what they print and how they
fail (``bastion: error: ...``, exit 2, no traceback) is what is checked here.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from bastion.cli.main import main


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="bastion", env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_failed(result: Result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert re.search(rf"^bastion: error: .*{pattern}", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_group_is_registered() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "pki" in result.stdout
    for command in ("init", "client", "server", "revoke", "crl"):
        sub = invoke("pki", command, "--help")
        assert sub.exit_code == 0, command
        assert f"Usage: bastion pki {command}" in sub.stdout


def test_init_lists_what_it_created(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    result = invoke("pki", "init", str(directory), "--san", "mqtt.example.com", "--san", "10.0.0.7")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name, bits in (("ca.key", 0o600), ("ca.crt", 0o644), ("server.key", 0o600)):
        assert mode(directory / name) == bits
        assert re.search(rf"{re.escape(str(directory / name))}\s+{bits:04o}\s", out), name
    assert re.search(rf"{re.escape(str(directory / 'server.crt'))}\s+0644\s", out)
    assert "subject  CN=Bastion Dev CA" in out
    assert "subject  CN=localhost" in out
    assert "SANs     DNS:localhost, IP:127.0.0.1, IP:::1, DNS:mqtt.example.com, IP:10.0.0.7" in out
    assert "usage    serverAuth" in out
    assert re.search(r"expires  \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in 3650 days\)", out)
    assert re.search(r"expires  .*\(in 825 days\)", out)
    assert re.search(r"SHA-256  ([0-9A-F]{2}:){31}[0-9A-F]{2}", out)
    assert f"bastion pki client NAME --dir {directory}" in out
    assert result.stderr == ""


def test_init_options(tmp_path: Path) -> None:
    result = invoke(
        "pki", "init", str(tmp_path), "--cn", "Plant 7 CA", "--days", "30", "--server-days", "10"
    )
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    assert ca.subject.rfc4514_string() == "CN=Plant 7 CA"
    assert "(in 30 days)" in result.stdout and "(in 10 days)" in result.stdout


def test_init_refuses_to_overwrite_then_force(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    before = (tmp_path / "ca.crt").read_bytes()
    assert_failed(invoke("pki", "init", str(tmp_path)), r"ca\.key already exists.*--force")
    assert (tmp_path / "ca.crt").read_bytes() == before
    forced = invoke("pki", "init", str(tmp_path), "--force")
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_init_rejects_a_bad_san(tmp_path: Path) -> None:
    assert_failed(
        invoke("pki", "init", str(tmp_path / "pki"), "--san", "not a name"),
        "invalid subject alternative name 'not a name'",
    )
    assert not (tmp_path / "pki").exists()


def test_init_rejects_bad_days(tmp_path: Path) -> None:
    assert_failed(invoke("pki", "init", str(tmp_path), "--days", "0"), "invalid validity of 0 days")


def test_client_with_dir(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    result = invoke("pki", "client", "sensor1", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert re.search(rf"{re.escape(str(tmp_path / 'sensor1.key'))}\s+0600\s", result.stdout)
    assert re.search(rf"{re.escape(str(tmp_path / 'sensor1.crt'))}\s+0644\s", result.stdout)
    assert "subject  CN=sensor1" in result.stdout
    assert "usage    clientAuth" in result.stdout
    assert "(in 825 days)" in result.stdout
    assert mode(tmp_path / "sensor1.key") == 0o600


def test_client_finds_the_ca_in_the_environment(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path / "ca")).exit_code == 0
    result = invoke(
        "pki",
        "client",
        "sensor2",
        "--out",
        str(tmp_path / "devices"),
        "--days",
        "90",
        "--san",
        "email:sensor2@example.com",
        env={"BASTION_PKI_DIR": str(tmp_path / "ca")},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "devices" / "sensor2.crt").exists()
    assert "SANs     email:sensor2@example.com" in result.stdout
    assert "(in 90 days)" in result.stdout


def test_client_defaults_to_pki_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_PKI_DIR", raising=False)
    assert_failed(invoke("pki", "client", "sensor1"), r"no CA in pki: pki/ca\.crt not found")
    assert invoke("pki", "init", "pki").exit_code == 0
    result = invoke("pki", "client", "sensor1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pki" / "sensor1.crt").exists()


@pytest.mark.parametrize("name", ["../escape", "ca", "a b", ".x", "x" * 65])
def test_client_rejects_bad_names(tmp_path: Path, name: str) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    assert_failed(invoke("pki", "client", name, "--dir", str(tmp_path)), "invalid name")


def test_client_refuses_to_overwrite(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    assert invoke("pki", "client", "s1", "--dir", str(tmp_path)).exit_code == 0
    assert_failed(invoke("pki", "client", "s1", "--dir", str(tmp_path)), r"s1\.key already exists")
    assert invoke("pki", "client", "s1", "--dir", str(tmp_path), "--force").exit_code == 0


def test_client_with_a_broken_ca(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    (tmp_path / "ca.key").unlink()
    (tmp_path / "ca.key").write_text("garbage\n")
    assert_failed(
        invoke("pki", "client", "s1", "--dir", str(tmp_path)), r"ca\.key: not a PEM private key"
    )


def test_server_reissue(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    assert_failed(
        invoke("pki", "server", "--dir", str(tmp_path), "--san", "broker.lan"),
        r"server\.key already exists",
    )
    result = invoke("pki", "server", "--dir", str(tmp_path), "--san", "broker.lan", "--force")
    assert result.exit_code == 0, result.output
    assert "SANs     DNS:localhost, IP:127.0.0.1, IP:::1, DNS:broker.lan" in result.stdout


def test_revoke_and_crl(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path)).exit_code == 0
    assert invoke("pki", "client", "s1", "--dir", str(tmp_path)).exit_code == 0
    cert = tmp_path / "s1.crt"

    result = invoke(
        "pki", "revoke", str(cert), "--dir", str(tmp_path), "--reason", "key-compromise"
    )
    assert result.exit_code == 0, result.output
    assert "CN=s1 (serial " in result.stdout and ") is revoked." in result.stdout
    assert re.search(rf"{re.escape(str(tmp_path / 'ca.crl'))}\s+0644\s+CRL #1", result.stdout)
    assert "revoked  1 certificate\n" in result.stdout

    again = invoke("pki", "revoke", str(cert), "--dir", str(tmp_path))
    assert again.exit_code == 0 and "was already revoked" in again.stdout

    refreshed = invoke("pki", "crl", "--dir", str(tmp_path), "--days", "7")
    assert refreshed.exit_code == 0, refreshed.output
    assert "CRL #3" in refreshed.stdout and "(in 7 days)" in refreshed.stdout
    crl = x509.load_pem_x509_crl((tmp_path / "ca.crl").read_bytes())
    assert len(crl) == 1


def test_revoke_a_foreign_certificate(tmp_path: Path) -> None:
    assert invoke("pki", "init", str(tmp_path / "a")).exit_code == 0
    assert invoke("pki", "init", str(tmp_path / "b")).exit_code == 0
    assert_failed(
        invoke("pki", "revoke", str(tmp_path / "b" / "server.crt"), "--dir", str(tmp_path / "a")),
        "was not issued by the CA",
    )
