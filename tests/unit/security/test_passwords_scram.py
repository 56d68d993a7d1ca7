"""Unit tests for ``$scram-sha-256$`` lines in password files: format, verify, errors, saving.

A SCRAM line serves SCRAM-SHA-256 (``scram_credential``) and plain CONNECT passwords
(``verify`` derives the keys again); everything else about the file keeps its behaviour.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import argon2
import pytest
from argon2.profiles import CHEAPEST

from bastion.errors import ConfigError
from bastion.security.passwords import PasswordFile
from bastion.security.scram import DEFAULT_ITERATIONS, MIN_ITERATIONS, derive_credential

# RFC 7677's user: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
RFC_CREDENTIAL = derive_credential(
    b"pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


RFC_LINE = (
    f"user:$scram-sha-256$4096$W22ZaJ0SNY7soEsUEjb6gQ=="
    f"${b64(RFC_CREDENTIAL.stored_key)}${b64(RFC_CREDENTIAL.server_key)}"
)


def cheap() -> argon2.PasswordHasher:
    return argon2.PasswordHasher.from_parameters(CHEAPEST)


def test_scram_line_is_read() -> None:
    pw = PasswordFile.parse(RFC_LINE + "\n", hasher=cheap())
    assert pw.scheme("user") == "scram-sha-256"
    assert pw.scram_credential("user") == RFC_CREDENTIAL
    assert pw.has_scram
    assert pw.verify("user", b"pencil")
    assert not pw.verify("user", b"pencil ")
    assert not pw.needs_rehash("user")  # argon2id would end its SCRAM logins
    assert pw.dumps() == RFC_LINE + "\n"


def test_set_scram_writes_a_line_usable_both_ways(tmp_path: Path) -> None:
    pw = PasswordFile(cheap())
    pw.set("plain", b"argon")
    pw.set_scram("device", "pässwort".encode())
    assert pw.scram_credential("plain") is None
    assert pw.scram_credential("nobody") is None
    credential = pw.scram_credential("device")
    assert credential is not None
    assert credential.iterations == DEFAULT_ITERATIONS and len(credential.salt) == 16
    line = pw.dumps().splitlines()[1]
    assert line.startswith(f"device:$scram-sha-256${DEFAULT_ITERATIONS}$")
    path = tmp_path / "passwd"
    pw.save(path)
    again = PasswordFile.load(path, hasher=cheap())
    assert again.scram_credential("device") == credential
    assert again.verify("device", "pässwort".encode())
    assert again.verify("plain", b"argon")
    assert not again.verify("device", b"argon")


def test_set_scram_replaces_argon2_and_back() -> None:
    pw = PasswordFile(cheap())
    pw.set("u", b"one")
    pw.set_scram("u", b"two", iterations=MIN_ITERATIONS)
    assert pw.scheme("u") == "scram-sha-256" and pw.verify("u", b"two")
    assert len(pw) == 1 and pw.dumps().count("\n") == 1
    pw.set("u", b"three")
    assert pw.scheme("u") == "argon2id" and pw.scram_credential("u") is None
    assert not pw.has_scram


def test_set_scram_refuses_bad_names_and_counts() -> None:
    pw = PasswordFile(cheap())
    with pytest.raises(ValueError, match="':'"):
        pw.set_scram("a:b", b"x")
    with pytest.raises(ValueError, match="iteration count"):
        pw.set_scram("a", b"x", iterations=1000)
    assert len(pw) == 0


def test_decoy_secret_is_stable_and_tracks_the_file() -> None:
    text = RFC_LINE + "\n"
    one = PasswordFile.parse(text, hasher=cheap())
    two = PasswordFile.parse("# comment\n" + text, hasher=cheap())
    assert one.decoy_secret() == two.decoy_secret()  # survives restarts (same hashes)
    three = PasswordFile.parse(text, hasher=cheap())
    three.set_scram("other", b"x", iterations=MIN_ITERATIONS)
    assert three.decoy_secret() != one.decoy_secret()


def test_scram_user_verification_costs_a_dummy_argon2_check() -> None:
    class Counting(argon2.PasswordHasher):
        calls = 0

        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            Counting.calls += 1
            return super().verify(hash, password)

    hasher = Counting(time_cost=1, memory_cost=8, parallelism=1)
    pw = PasswordFile.parse(RFC_LINE + "\n", hasher=hasher)
    pw.verify("user", b"pencil")
    pw.verify("nobody", b"pencil")
    assert Counting.calls == 2  # same as an unknown user


SALT, KEY = b64(bytes(range(16))), b64(bytes(32))


@pytest.mark.parametrize(
    ("hash_field", "problem"),
    [
        (f"$scram-sha-256$4096${SALT}${KEY}", "must be $scram-sha-256$<iterations>"),
        (f"$scram-sha-256$4096${SALT}${KEY}${KEY}$x", "must be $scram-sha-256$<iterations>"),
        (f"$scram-sha-256$abc${SALT}${KEY}${KEY}", "iteration count is not a decimal"),
        (f"$scram-sha-256$1000${SALT}${KEY}${KEY}", "between 4096 and"),
        (f"$scram-sha-256$4096$!!${KEY}${KEY}", "salt is not valid base64"),
        (f"$scram-sha-256$4096${b64(b'short')}${KEY}${KEY}", "salt must be"),
        (f"$scram-sha-256$4096${SALT}${b64(bytes(31))}${KEY}", "stored key must decode to 32"),
        (f"$scram-sha-256$4096${SALT}${KEY}$AAAA", "server key must decode to 32"),
        ("$scram-sha-1$4096$x$y$z", "unknown hash scheme"),
    ],
)
def test_malformed_scram_lines_name_the_problem(hash_field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PasswordFile.parse(f"# users\nsensor:{hash_field}\n", source="pw.txt")
    message = str(caught.value)
    assert message.startswith("pw.txt:2: user 'sensor': ")
    assert problem in message
    assert KEY not in message  # no hash material in errors
