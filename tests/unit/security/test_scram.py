"""Unit tests for ``bastion.security.scram``: RFC 7677's vector, failures, decoys, parsing.

The client messages are built here by hand from RFC 5802 (``client_final`` below), so the
server is checked against an independent computation as well as the RFC's fixed transcript.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bastion.security import scram
from bastion.security.scram import (
    DEFAULT_ITERATIONS,
    MAX_MESSAGE_BYTES,
    MIN_ITERATIONS,
    ScramCredential,
    ScramError,
    ScramServer,
    decoy_credential,
    derive_credential,
    normalize_password,
    saslprep,
    verify_password,
)

# RFC 7677 §3: user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

SECRET = b"decoy secret for tests"
RFC_CREDENTIAL = derive_credential(b"pencil", salt=RFC_SALT, iterations=4096)


def rfc_server(**users: ScramCredential) -> ScramServer:
    store = users or {"user": RFC_CREDENTIAL}
    return ScramServer(store.get, decoy_secret=SECRET, server_nonce=RFC_SERVER_NONCE)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def client_final(
    client_first: bytes, server_first: bytes, password: bytes, extensions: str = ""
) -> bytes:
    """RFC 5802 §3 client computation (gs2 header ``n,,``); ``extensions``: ``,x=...``."""
    bare = client_first.decode().split(",", 2)[2]
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c=biws,r={attrs['r']}{extensions}"
    auth_message = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def failure(exchange: ScramServer, message: bytes, *, first: bool = False) -> str:
    with pytest.raises(ScramError) as caught:
        if first:
            exchange.first(message)
        else:
            exchange.final(message)
    return caught.value.error


# -- RFC 7677 ------------------------------------------------------------------------


def test_rfc_7677_vector_is_reproduced_exactly() -> None:
    server = rfc_server()
    assert server.first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.username == "user"
    assert server.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_rfc_credential_keys() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    assert RFC_CREDENTIAL.stored_key == hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    assert RFC_CREDENTIAL.server_key == _hmac(salted, b"Server Key")
    assert "stored_key" not in repr(RFC_CREDENTIAL)  # keys stay out of logs


def test_independent_client_computation_matches_the_rfc() -> None:
    assert client_final(RFC_CLIENT_FIRST, RFC_SERVER_FIRST, b"pencil") == RFC_CLIENT_FINAL


def test_random_server_nonce_extends_the_client_nonce() -> None:
    cred = derive_credential(b"pw", iterations=MIN_ITERATIONS)
    one = ScramServer({"u": cred}.get, decoy_secret=SECRET)
    two = ScramServer({"u": cred}.get, decoy_secret=SECRET)
    first_a = one.first(b"n,,n=u,r=abc")
    first_b = two.first(b"n,,n=u,r=abc")
    nonce_a = first_a.split(b",")[0][2:]
    assert nonce_a.startswith(b"abc") and len(nonce_a) == 3 + 24
    assert first_a != first_b
    assert one.final(client_final(b"n,,n=u,r=abc", first_a, b"pw")).startswith(b"v=")


# -- failures --------------------------------------------------------------------------


def test_wrong_password_fails_with_invalid_proof() -> None:
    server = rfc_server()
    server_first = server.first(RFC_CLIENT_FIRST)
    assert failure(server, client_final(RFC_CLIENT_FIRST, server_first, b"pencil2")) == (
        "invalid-proof"
    )


def test_unknown_user_is_indistinguishable_until_the_proof() -> None:
    known = rfc_server(user=derive_credential(b"pencil"))  # default iterations, 16-byte salt
    unknown = rfc_server(user=derive_credential(b"pencil"))
    first_known = known.first(b"n,,n=user,r=abc").decode()
    first_unknown = unknown.first(b"n,,n=nobody,r=abc").decode()
    k = dict(part.split("=", 1) for part in first_known.split(","))
    u = dict(part.split("=", 1) for part in first_unknown.split(","))
    assert k["r"] == u["r"]
    assert k["i"] == u["i"] == str(DEFAULT_ITERATIONS)
    assert len(base64.b64decode(k["s"])) == len(base64.b64decode(u["s"])) == 16
    # The decoy salt is stable per name (a real user's salt does not change either) ...
    again = rfc_server().first(b"n,,n=nobody,r=xyz").decode()
    assert again.split(",")[1] == first_unknown.split(",")[1]
    # ... and differs between names.
    other = rfc_server().first(b"n,,n=nobody2,r=xyz").decode()
    assert other.split(",")[1] != first_unknown.split(",")[1]
    wrong = client_final(b"n,,n=user,r=abc", first_known.encode(), b"guess")
    guess = client_final(b"n,,n=nobody,r=abc", first_unknown.encode(), b"guess")
    assert failure(known, wrong) == failure(unknown, guess) == "invalid-proof"


def test_a_correct_proof_for_a_decoy_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exchange of an unknown user fails even if the proof matched the decoy keys."""
    assert decoy_credential(SECRET, "nobody") == decoy_credential(SECRET, "nobody")
    known_keys = derive_credential(b"pencil", iterations=MIN_ITERATIONS)
    monkeypatch.setattr(scram, "decoy_credential", lambda secret, name: known_keys)
    server = rfc_server()
    server_first = server.first(b"n,,n=nobody,r=abc")
    proof = client_final(b"n,,n=nobody,r=abc", server_first, b"pencil")
    assert failure(server, proof) == "invalid-proof"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "invalid-encoding"),
        (b"n,,", "invalid-encoding"),
        (b"n", "invalid-encoding"),
        (b"x,,n=user,r=abc", "invalid-encoding"),
        (b"p=tls-unique,,n=user,r=abc", "channel-binding-not-supported"),
        (b"n,,m=ext,n=user,r=abc", "extensions-not-supported"),
        (b"n,,r=abc,n=user", "invalid-encoding"),
        (b"n,,n=user", "invalid-encoding"),
        (b"n,,n=,r=abc", "invalid-username-encoding"),
        (b"n,,n=us=2Xer,r=abc", "invalid-username-encoding"),
        (b"n,,n=user=,r=abc", "invalid-username-encoding"),
        (b"n,,n=us\x07er,r=abc", "invalid-username-encoding"),
        (b"n,,n=user,r=", "invalid-encoding"),
        (b"n,,n=user,r=a b", "invalid-encoding"),
        (b"n,,n=user,r=abc,bad", "invalid-encoding"),
        (b"n,,n=user\xff,r=abc", "invalid-encoding"),
        (b"n,,n=user\x00,r=abc", "invalid-encoding"),
        (b"n,a=admin,n=user,r=abc", "other-error"),
        (b"n,x=admin,n=user,r=abc", "invalid-encoding"),
        (b"n,,n=user,r=" + b"a" * MAX_MESSAGE_BYTES, "invalid-encoding"),
    ],
)
def test_malformed_client_first(message: bytes, error: str) -> None:
    assert failure(rfc_server(), message, first=True) == error


def _final_with(client_final: str) -> str:
    server = rfc_server()
    server.first(RFC_CLIENT_FIRST)
    return failure(server, client_final.encode())


NONCE = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (f"c=biws,r={NONCE}", "invalid-encoding"),  # no proof
        (f"r={NONCE},c=biws,p={PROOF}", "invalid-encoding"),  # order
        (f"c=eSws,r={NONCE},p={PROOF}", "channel-bindings-dont-match"),  # "y,," not "n,,"
        (f"c=bi!s,r={NONCE},p={PROOF}", "invalid-encoding"),
        (f"c=biws,r={NONCE}x,p={PROOF}", "other-error"),  # nonce
        (f"c=biws,r=rOprNGfwEbeRWgbNEkqO,p={PROOF}", "other-error"),  # client half only
        (f"c=biws,r={NONCE},p=not*base64", "invalid-encoding"),
        (f"c=biws,r={NONCE},p=AAAA", "invalid-proof"),  # wrong length
        (f"c=biws,r={NONCE},p={PROOF},x=1", "invalid-encoding"),  # proof must come last
        (f"c=biws,p={PROOF}", "invalid-encoding"),
    ],
)
def test_malformed_client_final(message: str, error: str) -> None:
    assert _final_with(message) == error


def test_extensions_before_the_proof_are_ignored_but_signed() -> None:
    server = rfc_server()
    server_first = server.first(RFC_CLIENT_FIRST)
    signed = client_final(RFC_CLIENT_FIRST, server_first, b"pencil", extensions=",x=ext")
    assert server.final(signed).startswith(b"v=")
    # The proof covers client-final-without-proof: an extension slipped in breaks it.
    tampered = rfc_server()
    tampered.first(RFC_CLIENT_FIRST)
    assert failure(tampered, RFC_CLIENT_FINAL.replace(b",p=", b",x=ext,p=")) == "invalid-proof"


def test_messages_out_of_order_fail() -> None:
    server = rfc_server()
    assert failure(server, RFC_CLIENT_FINAL) == "other-error"
    server = rfc_server()
    server.first(RFC_CLIENT_FIRST)
    assert failure(server, RFC_CLIENT_FIRST, first=True) == "other-error"
    assert server.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert failure(server, RFC_CLIENT_FINAL) == "other-error"  # no replay on one exchange
    broken = rfc_server()
    failure(broken, b"garbage", first=True)
    assert failure(broken, RFC_CLIENT_FIRST, first=True) == "other-error"


# -- names, escapes, channel binding flag ----------------------------------------------


def test_escaped_names_are_decoded() -> None:
    cred = derive_credential(b"pw", iterations=MIN_ITERATIONS)
    server = ScramServer({"a,b=c": cred}.get, decoy_secret=SECRET)
    first = b"n,,n=a=2Cb=3Dc,r=abc"
    server_first = server.first(first)
    assert server.username == "a,b=c"
    assert server.final(client_final(first, server_first, b"pw")).startswith(b"v=")


def test_names_are_saslprepped_before_lookup() -> None:
    cred = derive_credential(b"pw", iterations=MIN_ITERATIONS)
    server = ScramServer({"IX": cred}.get, decoy_secret=SECRET)
    first = "n,,n=I\u00adX,r=abc".encode()  # soft hyphen is mapped to nothing
    server_first = server.first(first)
    assert server.username == "IX"
    assert server.final(client_final(first, server_first, b"pw")).startswith(b"v=")


def test_matching_authorization_identity_is_accepted() -> None:
    server = rfc_server()
    first = b"n,a=user,n=user,r=abc"
    server_first = server.first(first)
    bare = "n=user,r=abc"
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c={base64.b64encode(b'n,a=user,').decode()},r={attrs['r']}"
    auth_message = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    message = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
    assert server.final(message).startswith(b"v=")


def test_y_flag_is_accepted_with_its_own_binding() -> None:
    """ "y": the client supports channel binding but thinks the server does not — right."""
    server = rfc_server()
    server_first = server.first(b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert server_first == RFC_SERVER_FIRST
    assert failure(server, RFC_CLIENT_FINAL) == "channel-bindings-dont-match"  # c=biws is "n,,"


# -- credentials and normalization -----------------------------------------------------


def test_derive_and_verify_password() -> None:
    cred = derive_credential(b"s3cret", iterations=MIN_ITERATIONS)
    assert len(cred.salt) == 16 and cred.iterations == MIN_ITERATIONS
    assert verify_password(cred, b"s3cret")
    assert not verify_password(cred, b"s3cret ")
    assert derive_credential(b"s3cret", iterations=MIN_ITERATIONS).salt != cred.salt


@pytest.mark.parametrize("iterations", [0, MIN_ITERATIONS - 1, 10_000_001])
def test_iteration_count_is_bounded(iterations: int) -> None:
    with pytest.raises(ValueError, match="iteration count"):
        derive_credential(b"pw", iterations=iterations)


def test_credential_fields_are_checked() -> None:
    key = bytes(32)
    with pytest.raises(ValueError, match="salt"):
        ScramCredential(b"short", 4096, key, key)
    with pytest.raises(ValueError, match="keys"):
        ScramCredential(bytes(16), 4096, key[:31], key)


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("user", "user"),  # RFC 4013 §3 examples
        ("I\u00adX", "IX"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),  # non-ASCII space
        ("caf\u0065\u0301", "caf\u00e9"),  # NFKC composes
    ],
)
def test_saslprep_maps_and_normalizes(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "a\x7fb", "\ue000", "\ufdd0"])
def test_saslprep_refuses_prohibited_characters(text: str) -> None:
    with pytest.raises(ValueError):
        saslprep(text)


def test_password_normalization() -> None:
    assert normalize_password(b"pencil") == b"pencil"
    assert normalize_password("I\u00adX".encode()) == b"IX"
    assert normalize_password(b"\xff\xfe") == b"\xff\xfe"  # not UTF-8: used as it is
    assert normalize_password(b"a\x07b") == b"a\x07b"  # prohibited: used as it is
    nfd = derive_credential("cafe\u0301".encode(), salt=RFC_SALT, iterations=MIN_ITERATIONS)
    assert verify_password(nfd, "caf\u00e9".encode())
