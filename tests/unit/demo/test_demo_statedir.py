"""The demo's state directory (``demo/statedir.py``): made from nothing, reused, or refused.

Real files in pytest's temporary directory: the PKI is loaded back with ``cryptography``, the
password file is checked with the broker's own ``PasswordFile.verify``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest
from cryptography import x509

from bastion.demo.access import client_names
from bastion.demo.errors import DemoError
from bastion.demo.statedir import PreparedState, prepare_state_dir
from bastion.security.acl import AclRules
from bastion.security.passwords import PasswordFile


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


CHEAP = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def prepare(root: Path, host: str = "127.0.0.1") -> PreparedState:
    """A run's preparation, with the directory let go at once (as at the end of a run)."""
    state = prepare_state_dir(root, server_host=host, hasher=CHEAP)
    state.release()
    return state


@pytest.fixture(scope="module")
def made_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory made by a first run (copied by the tests that change it)."""
    root = tmp_path_factory.mktemp("made") / "demo"
    previous = os.umask(0o022)
    try:
        prepare(root)
    finally:
        os.umask(previous)
    return root


@pytest.fixture
def existing(made_once: Path, tmp_path: Path) -> Path:
    """A private copy of the state directory of an earlier run."""
    root = tmp_path / "demo"
    shutil.copytree(made_once, root)
    return root


def test_first_run_makes_everything_private(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    state = prepare(root)
    layout = state.layout
    assert state.fresh
    assert mode(root) == 0o700
    assert mode(layout.credentials) == 0o700
    assert mode(layout.pki) == 0o700
    assert mode(layout.passwd) == 0o600
    assert mode(layout.pki / "ca.key") == 0o600
    assert mode(layout.server_key) == 0o600
    assert set(state.passwords) == set(client_names())
    assert len(set(state.passwords.values())) == len(state.passwords)  # one each
    for name, password in state.passwords.items():
        path = layout.credential(name)
        assert mode(path) == 0o600
        assert path.read_text() == password + "\n"
        assert len(password) >= 32
    assert any("dev CA" in note for note in state.created)
    assert state.reused == ()


def test_password_file_verifies_every_credential(tmp_path: Path) -> None:
    state = prepare_state_dir(tmp_path / "demo")  # argon2id at its real cost, once
    state.release()
    hashed = PasswordFile.load(state.layout.passwd)
    assert all(hashed.scheme(name) == "argon2id" for name in state.passwords)
    for name in ("sensor1", "viewer"):  # each check costs a real argon2id verification
        password = state.passwords[name].encode()
        assert hashed.verify(name, password)
        assert not hashed.verify(name, b"not " + password)
    assert not hashed.verify("sensor1", state.passwords["sensor2"].encode())


def test_acl_is_loadable_by_the_broker(existing: Path) -> None:
    state = prepare(existing)
    rules = AclRules.load(state.layout.acl)
    assert rules.check("sensor1", "sensor1", "temp/sensor1", "write").allowed
    assert not rules.check("sensor1", "sensor1", "humid/sensor2", "write").allowed


def test_server_certificate_names_loopback_and_chains_to_the_ca(existing: Path) -> None:
    layout = prepare(existing).layout
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_second_run_reuses_pki_credentials_and_passwd(existing: Path) -> None:
    root = existing
    first = prepare(root)
    files = [first.layout.ca_cert, first.layout.server_cert, first.layout.passwd]
    files += [first.layout.credential(name) for name in client_names()]
    before = {path: path.read_bytes() for path in files}
    second = prepare(root)
    assert not second.fresh
    assert second.created == ()
    assert second.passwords == first.passwords
    assert {path: path.read_bytes() for path in files} == before
    assert any("password file" in note for note in second.reused)


def test_a_missing_credential_is_made_again_and_hashed(existing: Path) -> None:
    root = existing
    first = prepare(root)
    first.layout.credential("sensor3").unlink()
    second = prepare(root)
    assert second.passwords["sensor3"] != first.passwords["sensor3"]
    assert second.passwords["sensor1"] == first.passwords["sensor1"]
    hashed = PasswordFile.load(second.layout.passwd)
    assert hashed.verify("sensor3", second.passwords["sensor3"].encode())


def test_another_host_gets_a_new_server_certificate_from_the_same_ca(existing: Path) -> None:
    layout = prepare(existing).layout
    ca_before = layout.ca_cert.read_bytes()
    state = prepare(existing, host="192.0.2.7")
    assert layout.ca_cert.read_bytes() == ca_before
    assert any("did not name 192.0.2.7" in note for note in state.created)
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.0.2.7" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def test_an_existing_private_directory_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    prepare(root)
    assert mode(root) == 0o700


def test_a_foreign_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match=r"not empty and was not made by `bastion demo`"):
        prepare_state_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "demo"
    path.write_text("x")
    with pytest.raises(DemoError, match="exists and is not a directory"):
        prepare_state_dir(path)


def test_a_half_pki_is_reported_as_damage(existing: Path) -> None:
    (existing / "pki" / "ca.key").unlink()
    with pytest.raises(DemoError, match=r"is damaged: .*ca\.key not found.*; delete .*pki"):
        prepare(existing)


def test_an_empty_credential_is_reported_as_damage(existing: Path) -> None:
    (existing / "credentials" / "viewer.password").write_text("\n")
    with pytest.raises(DemoError, match=r"viewer\.password holds no usable password"):
        prepare(existing)


def test_a_corrupt_password_file_is_rewritten(existing: Path) -> None:
    (existing / "passwd").write_text("garbage without a colon\n")
    again = prepare(existing)
    assert PasswordFile.load(again.layout.passwd).verify(
        "logger", again.passwords["logger"].encode()
    )


def test_a_directory_in_use_by_another_demo_is_refused(existing: Path) -> None:
    first = prepare_state_dir(existing, hasher=CHEAP)
    with pytest.raises(DemoError, match="another `bastion demo` is using"):
        prepare_state_dir(existing, hasher=CHEAP)
    first.release()
    prepare(existing)
