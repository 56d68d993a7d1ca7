"""Unit tests for ``bastion.security.pki`` (with ``pkifiles`` and ``crl``): files and modes,
extensions, chain verification with ``cryptography``'s verifier, refusals, and the CRL.

Handshakes with these certificates are in ``test_tls.py``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.errors import ConfigError
from bastion.security import pki

E = TypeVar("E", bound=x509.ExtensionType)
DEFAULT_SANS = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    return directory


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def store_of(ca_dir: Path) -> verification.Store:
    return verification.Store([load(ca_dir / "ca.crt")])


# ----------------------------------------------------------------- init


def test_init_creates_ca_and_server_with_safe_modes(tmp_path: Path) -> None:
    result = pki.init_ca(tmp_path / "pki")

    names = {f.path.name: f.mode for f in result.files}
    assert names == {"ca.key": 0o600, "ca.crt": 0o644, "server.key": 0o600, "server.crt": 0o644}
    for written in result.files:
        assert mode(written.path) == written.mode
    assert [f.path.name for f in result.files] == ["ca.key", "ca.crt", "server.key", "server.crt"]
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == sorted(names)


def test_keys_stay_private_under_a_permissive_umask(tmp_path: Path) -> None:
    os.umask(0)
    result = pki.init_ca(tmp_path / "pki")
    assert result.ca.key is not None and result.ca.key.mode == 0o600
    assert mode(tmp_path / "pki" / "ca.key") == 0o600
    assert mode(tmp_path / "pki" / "server.key") == 0o600
    assert mode(tmp_path / "pki" / "server.crt") == 0o644


def test_keys_are_created_0600_never_chmodded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: dict[str, int] = {}
    real_open = os.open

    def spy_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        opened[Path(path).name] = mode
        assert flags & os.O_EXCL and flags & os.O_CREAT
        return real_open(path, flags, mode)

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("permissions must be right from creation, not fixed afterwards")

    monkeypatch.setattr("bastion.security.pkifiles.os.open", spy_open)
    monkeypatch.setattr("bastion.security.pkifiles.os.chmod", no_chmod)
    monkeypatch.setattr("bastion.security.pkifiles.os.fchmod", no_chmod)
    pki.init_ca(tmp_path / "pki")
    assert opened == {"ca.key": 0o600, "ca.crt": 0o644, "server.key": 0o600, "server.crt": 0o644}


def test_ca_certificate_extensions(ca_dir: Path) -> None:
    ca = load(ca_dir / "ca.crt")
    assert ca.subject.rfc4514_string() == "CN=Bastion Dev CA"
    assert ca.issuer == ca.subject
    constraints = ext(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ext(ca, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3650, minutes=10)


def test_server_certificate_extensions(tmp_path: Path) -> None:
    result = pki.init_ca(
        tmp_path / "pki", sans=["mqtt.example.com", "10.0.0.5", "IP:fd00::1", "localhost"]
    )
    server = load(tmp_path / "pki" / "server.crt")
    ca = load(tmp_path / "pki" / "ca.crt")

    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    san = ext(server, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::1"),
    ]
    assert result.server.sans == (
        *DEFAULT_SANS,
        "DNS:mqtt.example.com",
        "IP:10.0.0.5",
        "IP:fd00::1",
    )
    assert list(ext(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = ext(server, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext(server, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(server, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext(server, x509.SubjectKeyIdentifier).value.digest != ca_ski
    server.verify_directly_issued_by(ca)


def test_result_describes_what_was_written(tmp_path: Path) -> None:
    result = pki.init_ca(tmp_path / "pki", days=100)
    server = load(tmp_path / "pki" / "server.crt")
    info = result.server
    assert info.subject == "CN=localhost"
    assert info.issuer == "CN=Bastion Dev CA"
    assert info.usages == ("serverAuth",)
    assert not info.is_ca and result.ca.is_ca
    assert info.serial == server.serial_number
    assert info.fingerprint_sha256 == server.fingerprint(hashes.SHA256()).hex(":").upper()
    # the server certificate never outlives its CA
    assert info.not_after == result.ca.not_after == server.not_valid_after_utc
    assert result.directory == tmp_path / "pki"


@pytest.mark.parametrize(
    "dns_or_ip",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("broker.example.org"),
    ],
)
def test_server_chain_verifies(tmp_path: Path, dns_or_ip: x509.DNSName | x509.IPAddress) -> None:
    pki.init_ca(tmp_path, sans=["broker.example.org"])
    verifier = (
        verification.PolicyBuilder().store(store_of(tmp_path)).build_server_verifier(dns_or_ip)
    )
    chain = verifier.verify(load(tmp_path / "server.crt"), [])
    assert chain[-1] == load(tmp_path / "ca.crt")


def test_server_certificate_is_not_valid_for_other_names(ca_dir: Path) -> None:
    verifier = (
        verification.PolicyBuilder()
        .store(store_of(ca_dir))
        .build_server_verifier(x509.DNSName("evil.example"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(load(ca_dir / "server.crt"), [])


def test_rsa_key_type(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, key_type="rsa")
    for name in ("ca.crt", "server.crt"):
        key = load(tmp_path / name).public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    assert ext(load(tmp_path / "server.crt"), x509.KeyUsage).value.key_encipherment
    verifier = (
        verification.PolicyBuilder()
        .store(store_of(tmp_path))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    verifier.verify(load(tmp_path / "server.crt"), [])


# ----------------------------------------------------------------- refusing to overwrite


def test_init_refuses_to_overwrite(ca_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    with pytest.raises(ConfigError, match=r"ca\.key already exists; refusing to overwrite"):
        pki.init_ca(ca_dir)
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before


def test_init_refuses_when_only_one_target_exists(tmp_path: Path) -> None:
    (tmp_path / "server.crt").write_text("someone else's\n")
    with pytest.raises(ConfigError, match=r"server\.crt already exists"):
        pki.init_ca(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.crt"]


def test_init_refuses_a_symlink_target(tmp_path: Path) -> None:
    (tmp_path / "ca.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"ca\.key already exists"):
        pki.init_ca(tmp_path)
    assert not (tmp_path / "elsewhere").exists()


def test_force_replaces_with_fresh_files_and_modes(ca_dir: Path) -> None:
    old = load(ca_dir / "ca.crt")
    (ca_dir / "ca.key").chmod(0o644)  # an operator widened it: a forced rewrite must not keep it
    result = pki.init_ca(ca_dir, force=True)
    assert load(ca_dir / "ca.crt") != old
    assert mode(ca_dir / "ca.key") == 0o600
    assert result.ca.key is not None and result.ca.key.mode == 0o600
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp")]


def test_init_into_a_file_path_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        pki.init_ca(tmp_path / "file")


# ----------------------------------------------------------------- clients and servers


def test_issue_client(ca_dir: Path) -> None:
    info = pki.issue_client(ca_dir, "sensor1")
    cert = load(ca_dir / "sensor1.crt")
    assert cert.subject.rfc4514_string() == "CN=sensor1" == info.subject
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert info.usages == ("clientAuth",) and info.sans == ()
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert mode(ca_dir / "sensor1.key") == 0o600 and mode(ca_dir / "sensor1.crt") == 0o644
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=825, minutes=10)

    cert.verify_directly_issued_by(load(ca_dir / "ca.crt"))
    # (the TLS handshakes in test_tls.py verify it with OpenSSL, X509_STRICT included)


def test_client_chain_verifies_with_a_san(ca_dir: Path) -> None:
    # cryptography's client verifier insists on a SAN (OpenSSL does not); with one it passes.
    pki.issue_client(ca_dir, "sensor1", sans=["email:sensor1@example.com"])
    verifier = verification.PolicyBuilder().store(store_of(ca_dir)).build_client_verifier()
    verified = verifier.verify(load(ca_dir / "sensor1.crt"), [])
    assert verified.chain[-1] == load(ca_dir / "ca.crt")
    assert verified.subjects == [x509.RFC822Name("sensor1@example.com")]


def test_client_certificate_is_not_a_server_certificate(ca_dir: Path) -> None:
    pki.issue_client(ca_dir, "sensor1", sans=["DNS:localhost"])
    server_verifier = (
        verification.PolicyBuilder()
        .store(store_of(ca_dir))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(verification.VerificationError):
        server_verifier.verify(load(ca_dir / "sensor1.crt"), [])
    client_verifier = verification.PolicyBuilder().store(store_of(ca_dir)).build_client_verifier()
    with pytest.raises(verification.VerificationError):
        client_verifier.verify(load(ca_dir / "server.crt"), [])


def test_issue_client_with_sans_and_out_dir(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "devices"
    info = pki.issue_client(
        ca_dir, "dev-7@site.a", out_dir=out, sans=["email:dev7@example.com", "URI:urn:dev:7"]
    )
    assert info.cert.path == out / "dev-7@site.a.crt"
    assert info.sans == ("email:dev7@example.com", "URI:urn:dev:7")
    assert sorted(p.name for p in out.iterdir()) == ["dev-7@site.a.crt", "dev-7@site.a.key"]
    assert not (ca_dir / "dev-7@site.a.crt").exists()


def test_issue_client_refuses_to_overwrite(ca_dir: Path) -> None:
    pki.issue_client(ca_dir, "sensor1")
    with pytest.raises(ConfigError, match=r"sensor1\.key already exists"):
        pki.issue_client(ca_dir, "sensor1")
    pki.issue_client(ca_dir, "sensor1", force=True)


@pytest.mark.parametrize(
    "name",
    ["", "../x", "a/b", ".hidden", "-dash", "with space", "nul\x00", "é", "x" * 65, "ca", "Server"],
)
def test_issue_client_rejects_bad_names(ca_dir: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid name"):
        pki.issue_client(ca_dir, name)
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]


def test_issue_client_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no CA in .*ca\.crt not found.*bastion pki init"):
        pki.issue_client(tmp_path, "sensor1")


def test_issue_client_with_a_broken_ca(ca_dir: Path) -> None:
    (ca_dir / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ca\.crt: not a PEM certificate"):
        pki.issue_client(ca_dir, "sensor1")


def test_issue_client_with_a_mismatched_ca_key(ca_dir: Path) -> None:
    (ca_dir / "ca.key").unlink()
    (ca_dir / "ca.key").write_bytes((ca_dir / "server.key").read_bytes())
    with pytest.raises(ConfigError, match=r"ca\.key does not match the CA certificate"):
        pki.issue_client(ca_dir, "sensor1")


def test_issue_client_with_an_unreadable_ca_key(ca_dir: Path) -> None:
    (ca_dir / "ca.key").unlink()
    (ca_dir / "ca.key").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read CA key .*ca\.key"):
        pki.issue_client(ca_dir, "sensor1")


def test_issue_client_with_a_non_ca_certificate(ca_dir: Path) -> None:
    for suffix in ("crt", "key"):
        (ca_dir / f"ca.{suffix}").unlink()
        (ca_dir / f"ca.{suffix}").write_bytes((ca_dir / f"server.{suffix}").read_bytes())
    with pytest.raises(ConfigError, match="not a CA certificate"):
        pki.issue_client(ca_dir, "sensor1")


def test_leaf_validity_is_clamped_to_the_ca(tmp_path: Path) -> None:
    result = pki.init_ca(tmp_path, days=30)
    info = pki.issue_client(tmp_path, "sensor1", days=825)
    assert info.not_after == result.ca.not_after


@pytest.mark.parametrize("days", [0, -1, 36_501])
def test_invalid_validity(tmp_path: Path, days: int) -> None:
    with pytest.raises(ConfigError, match="invalid validity"):
        pki.init_ca(tmp_path, days=days)


def test_issue_server_reissues_with_new_sans(ca_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.key already exists"):
        pki.issue_server(ca_dir, sans=["mqtt.internal"])
    info = pki.issue_server(ca_dir, sans=["mqtt.internal"], force=True)
    assert info.sans == (*DEFAULT_SANS, "DNS:mqtt.internal")
    assert info.usages == ("serverAuth",)
    verifier = (
        verification.PolicyBuilder()
        .store(store_of(ca_dir))
        .build_server_verifier(x509.DNSName("mqtt.internal"))
    )
    verifier.verify(load(ca_dir / "server.crt"), [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", x509.DNSName("example.com")),
        ("DNS:example.com.", x509.DNSName("example.com")),
        ("*.example.com", x509.DNSName("*.example.com")),
        ("192.0.2.1", x509.IPAddress(ipaddress.ip_address("192.0.2.1"))),
        ("2001:db8::1", x509.IPAddress(ipaddress.ip_address("2001:db8::1"))),
        ("[2001:db8::2]", x509.IPAddress(ipaddress.ip_address("2001:db8::2"))),
        ("ip:::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("email:a@example.com", x509.RFC822Name("a@example.com")),
        ("URI:mqtts://broker.example/", x509.UniformResourceIdentifier("mqtts://broker.example/")),
    ],
)
def test_parse_san(text: str, expected: x509.GeneralName) -> None:
    assert pki.parse_san(text) == expected


@pytest.mark.parametrize(
    "text", ["", "bad_name!", "-a.example", "IP:300.1.1.1", "email:nobody", "URI:no scheme", "é.fr"]
)
def test_parse_san_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid subject alternative name"):
        pki.parse_san(text)


def test_bad_extra_san_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid subject alternative name"):
        pki.init_ca(tmp_path / "pki", sans=["ok.example", "not ok"])
    assert not (tmp_path / "pki").exists()


# ----------------------------------------------------------------- revocation


def read_crl(ca_dir: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())


def test_revoke_creates_a_signed_crl(ca_dir: Path) -> None:
    info = pki.issue_client(ca_dir, "sensor1")
    result = pki.revoke(ca_dir, ca_dir / "sensor1.crt", reason=x509.ReasonFlags.key_compromise)

    assert result.serial == info.serial and result.subject == "CN=sensor1"
    assert not result.already_revoked
    assert mode(ca_dir / "ca.crl") == 0o644 == result.crl.file.mode
    crl = read_crl(ca_dir)
    ca = load(ca_dir / "ca.crt")
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca_key)
    entry = crl.get_revoked_certificate_by_serial_number(info.serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert ext_crl_number(crl) == result.crl.number == 1
    assert result.crl.revoked_serials == (info.serial,)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=365)


def ext_crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_revoking_more_keeps_entries_and_moves_forward(ca_dir: Path) -> None:
    one = pki.issue_client(ca_dir, "one")
    two = pki.issue_client(ca_dir, "two")
    first = pki.revoke(ca_dir, ca_dir / "one.crt")
    second = pki.revoke(ca_dir, ca_dir / "two.crt")
    again = pki.revoke(ca_dir, ca_dir / "one.crt")

    assert second.crl.revoked_serials == (one.serial, two.serial)
    assert again.already_revoked and again.crl.revoked_serials == (one.serial, two.serial)
    assert (first.crl.number, second.crl.number, again.crl.number) == (1, 2, 3)
    # lastUpdate is the signing time, never in the future (OpenSSL ignores such a CRL)
    assert first.crl.last_update <= second.crl.last_update <= again.crl.last_update
    assert again.crl.last_update <= dt.datetime.now(dt.UTC)
    assert ext_crl_number(read_crl(ca_dir)) == 3


def test_write_crl_creates_an_empty_list(ca_dir: Path) -> None:
    info = pki.write_crl(ca_dir, days=7)
    assert info.revoked_serials == () and info.number == 1
    crl = read_crl(ca_dir)
    assert len(crl) == 0
    assert crl.next_update_utc == info.next_update


def test_revoke_refuses_a_foreign_certificate(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    with pytest.raises(ConfigError, match="was not issued by the CA"):
        pki.revoke(ca_dir, other / "server.crt")
    assert not (ca_dir / "ca.crl").exists()


def test_revoke_refuses_a_crl_from_elsewhere(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    pki.write_crl(other)
    (ca_dir / "ca.crl").write_bytes((other / "ca.crl").read_bytes())
    with pytest.raises(ConfigError, match=r"ca\.crl was not signed by the CA"):
        pki.revoke(ca_dir, ca_dir / "server.crt")
