"""Unit tests for ``bastion.security.enhanced_auth`` and the policy's method registry.

SCRAM-SHA-256 as an ``AuthMethod`` (steps, failures, claimed names), a plugin registered
beside it, and ``Policy.authenticated`` applying identity and client-id rules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import argon2
from argon2.profiles import CHEAPEST

from bastion.security.enhanced_auth import (
    AuthMethod,
    AuthStep,
    Continue,
    Failure,
    ScramSha256,
    Success,
)
from bastion.security.passwords import PasswordFile
from bastion.security.policy import Policy
from bastion.security.scram import MIN_ITERATIONS, SCRAM_SHA_256, derive_credential

CREDENTIAL = derive_credential(b"pencil", iterations=MIN_ITERATIONS)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def client_final(bare: str, server_first: bytes, password: bytes) -> bytes:
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def method() -> ScramSha256:
    return ScramSha256({"user": CREDENTIAL}.get, decoy_secret=b"k")


def test_scram_method_succeeds_in_one_round_trip() -> None:
    step = method().start("c1", b"n,,n=user,r=abc")
    assert isinstance(step, Continue)
    assert step.claimed_username == "user"
    assert step.data.startswith(b"r=abc")
    final = step.next(client_final("n=user,r=abc", step.data, b"pencil"))
    assert isinstance(final, Success)
    assert final.username == "user"
    assert final.data is not None and final.data.startswith(b"v=")


def test_scram_method_failures_are_0x86_and_name_the_scram_error() -> None:
    m = method()
    assert m.name == SCRAM_SHA_256
    missing = m.start("c1", None)
    assert isinstance(missing, Failure) and missing.reason_code == 0x86
    assert m.start("c1", b"") == missing
    bad = m.start("c1", b"p=tls-unique,,n=user,r=abc")
    assert bad == Failure(0x86, "SCRAM-SHA-256: e=channel-binding-not-supported", None)
    step = m.start("c1", b"n,,n=user,r=abc")
    assert isinstance(step, Continue)
    wrong = step.next(client_final("n=user,r=abc", step.data, b"pencil!"))
    assert wrong == Failure(0x86, "SCRAM-SHA-256: e=invalid-proof", "user")


def test_unknown_and_wrong_password_fail_the_same_way() -> None:
    m = method()
    outcomes: list[AuthStep] = []
    for name in ("user", "ghost"):
        step = m.start("c1", f"n,,n={name},r=abc".encode())
        assert isinstance(step, Continue)
        outcomes.append(step.next(client_final(f"n={name},r=abc", step.data, b"guess")))
    wrong, unknown = outcomes
    assert isinstance(wrong, Failure) and isinstance(unknown, Failure)
    assert (wrong.reason_code, wrong.message) == (unknown.reason_code, unknown.message)


def _passwords(*scram_users: str, plain: str = "") -> PasswordFile:
    pw = PasswordFile(argon2.PasswordHasher.from_parameters(CHEAPEST))
    for user in scram_users:
        pw.set_scram(user, b"pencil", iterations=MIN_ITERATIONS)
    if plain:
        pw.set(plain, b"pencil")
    return pw


@dataclass
class Token:
    """A toy plugin: a one-shot method accepting the token ``open-sesame`` as ``alice``."""

    name: str = "TOKEN"

    def start(self, client_id: str, auth_data: bytes | None) -> AuthStep:
        if auth_data == b"open-sesame":
            return Success("alice")
        return Failure(0x87, "bad token")


def test_registry_has_scram_only_with_scram_users_and_keeps_plugins() -> None:
    plugin: AuthMethod = Token()
    assert dict(Policy().enhanced_auth_methods) == {}
    argon_only = Policy(passwords=_passwords(plain="bob"), auth_methods=[plugin])
    assert set(argon_only.enhanced_auth_methods) == {"TOKEN"}
    policy = Policy(passwords=_passwords("user"), auth_methods=[plugin])
    assert set(policy.enhanced_auth_methods) == {SCRAM_SHA_256, "TOKEN"}
    assert policy.enhanced_auth_methods["TOKEN"] is plugin
    policy.reload(passwords=_passwords(plain="bob"), acl=None)
    assert set(policy.enhanced_auth_methods) == {"TOKEN"}
    policy.reload(passwords=_passwords("user"), acl=None)
    assert set(policy.enhanced_auth_methods) == {SCRAM_SHA_256, "TOKEN"}


def test_registered_scram_uses_the_password_file() -> None:
    policy = Policy(passwords=_passwords("user"))
    scram = policy.enhanced_auth_methods[SCRAM_SHA_256]
    step = scram.start("c1", b"n,,n=user,r=abc")
    assert isinstance(step, Continue)
    assert isinstance(step.next(client_final("n=user,r=abc", step.data, b"pencil")), Success)


def test_argon2_user_cannot_use_scram_and_looks_unknown() -> None:
    policy = Policy(passwords=_passwords("user", plain="bob"))
    scram = policy.enhanced_auth_methods[SCRAM_SHA_256]
    step = scram.start("c1", b"n,,n=bob,r=abc")
    assert isinstance(step, Continue)
    result = step.next(client_final("n=bob,r=abc", step.data, b"pencil"))
    assert result == Failure(0x86, "SCRAM-SHA-256: e=invalid-proof", "bob")


def test_authenticated_checks_names_and_client_id_rules() -> None:
    policy = Policy(passwords=_passwords("user"), client_id_patterns=["%u-*"])
    ok = policy.authenticated("user-1", "user", "1.2.3.4:5", connect_username="user")
    assert ok.reason_code == 0 and ok.identity is not None
    assert (ok.identity.username, ok.identity.client_id) == ("user", "user-1")
    assert policy.authenticated("user-1", "user", "p").reason_code == 0  # no User Name: fine
    mismatch = policy.authenticated("user-1", "user", "p", connect_username="admin")
    assert mismatch.reason_code == 0x86
    assert policy.authenticated("admin-1", "user", "p").reason_code == 0x85
    certified = Policy(use_certificate_identity=True)
    assert certified.authenticated("c", "user", "p", certificate_identity="user").reason_code == 0
    other = certified.authenticated("c", "user", "p", certificate_identity="mallory")
    assert other.reason_code == 0x86
