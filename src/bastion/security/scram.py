"""SCRAM-SHA-256 (RFC 5802 with RFC 7677), server side: message parsing, proofs, credentials.

Pure and synchronous: ``enhanced_auth.py`` drives a ``ScramServer`` from MQTT 5 AUTH packets
and ``passwords.py`` stores ``ScramCredential`` lines. No I/O; the only randomness is the nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MAX_MESSAGE_BYTES",
    "MIN_ITERATIONS",
    "SALT_BYTES",
    "SCRAM_SHA_256",
    "ScramCredential",
    "ScramError",
    "ScramServer",
    "decoy_credential",
    "derive_credential",
    "normalize_password",
    "saslprep",
    "verify_password",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
"""The SASL mechanism name, used verbatim as the MQTT 5 Authentication Method."""

DEFAULT_ITERATIONS = 10_000
"""PBKDF2 iterations of new credentials.

RFC 7677 asks for at least 4096. The count protects a *stolen* password file against
dictionary attacks; the broker itself never runs PBKDF2 during a SCRAM exchange (it stores
StoredKey/ServerKey), the client does, once per connection or once per boot if it caches
SaltedPassword (RFC 5802 §5.1 allows that). 10,000 costs a desktop ~5 ms and a
microcontroller without SHA-256 acceleration well under a few seconds; OWASP's 600,000
would make every device handshake (and every plain-password CONNECT of a SCRAM user, which
the broker checks by deriving) two orders of magnitude slower. Operators who want stronger
offline protection and no SCRAM keep argon2id lines.
"""

MIN_ITERATIONS = 4096  # RFC 7677 §4: "at least 4096"
MAX_ITERATIONS = 10_000_000  # a larger count makes each plain-password check a DoS
SALT_BYTES = 16
MIN_SALT_BYTES = 8
MAX_SALT_BYTES = 64
MAX_MESSAGE_BYTES = 2048
"""Longest client message accepted: far above any sane username + nonce + proof."""

MAX_NONCE_CHARS = 256
_KEY_BYTES = 32  # SHA-256 output
_SERVER_NONCE_BYTES = 18  # 24 base64url characters, 144 bits


class ScramError(Exception):
    """The exchange failed. ``error`` is RFC 5802's ``server-error-value`` (``e=...``)."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the server stores for one user (RFC 5802 §3); never the password itself.

    ``stored_key`` = H(ClientKey) checks the client's proof; ``server_key`` signs the
    server-final message so the client knows the server held the credential too.
    """

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not MIN_SALT_BYTES <= len(self.salt) <= MAX_SALT_BYTES:
            raise ValueError(f"salt must be {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes")
        if not MIN_ITERATIONS <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(
                f"iteration count must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
            )
        if len(self.stored_key) != _KEY_BYTES or len(self.server_key) != _KEY_BYTES:
            raise ValueError(f"stored and server keys must be {_KEY_BYTES} bytes")


# -- normalization (SASLprep, approximated) ----------------------------------------------

# RFC 3454 B.1 "commonly mapped to nothing" (the ones met in practice).
_MAPPED_TO_NOTHING = dict.fromkeys(
    map(
        ord,
        "\u00ad\u034f\u1806\u180b\u180c\u180d\u200b\u200c\u200d\u2060"
        "\ufe00\ufe01\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09"
        "\ufe0a\ufe0b\ufe0c\ufe0d\ufe0e\ufe0f\ufeff",
    )
)


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep, approximated: map, NFKC, refuse control characters.

    Done: non-ASCII spaces become U+0020 (C.1.2), "commonly mapped to nothing" characters are
    dropped (B.1), NFKC, and control characters (C.2), private use and surrogates, and
    non-characters are refused with ``ValueError``. Not done: the bidirectional-text rules
    and the "unassigned code point" check of RFC 3454 — names and passwords that depend on
    them may not interoperate with a client doing full SASLprep. ASCII is unchanged.
    """
    if text.isascii():
        mapped = text
    else:
        spaced = "".join(
            " " if ch != " " and unicodedata.category(ch) == "Zs" else ch for ch in text
        )
        mapped = unicodedata.normalize("NFKC", spaced.translate(_MAPPED_TO_NOTHING))
    for ch in mapped:
        category = unicodedata.category(ch)
        if category in ("Cc", "Co", "Cs") or (category == "Cn" and _is_noncharacter(ch)):
            raise ValueError("contains a prohibited character")
    return mapped


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def normalize_password(password: bytes) -> bytes:
    """The password as SCRAM hashes it: SASLprep of its UTF-8 text (bytes kept if not UTF-8)."""
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return password
    try:
        return saslprep(text).encode("utf-8")
    except ValueError:
        return password


# -- credentials -------------------------------------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)


def derive_credential(
    password: bytes, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredential:
    """A new credential for ``password`` (a fresh random salt unless one is given).

    ``ValueError`` if the iteration count is out of range (checked before any hashing).
    """
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iteration count must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    salted = _salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramCredential(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=_hmac(salted, b"Server Key"),
    )


def verify_password(credential: ScramCredential, password: bytes) -> bool:
    """Does a plain ``password`` match ``credential``? (one PBKDF2, constant-time compare)"""
    candidate = derive_credential(password, salt=credential.salt, iterations=credential.iterations)
    stored = hmac.compare_digest(candidate.stored_key, credential.stored_key)
    server = hmac.compare_digest(candidate.server_key, credential.server_key)
    return stored and server


def decoy_credential(secret: bytes, username: str) -> ScramCredential:
    """A stable fake credential for a user without one, so the exchange looks the same.

    Salt and keys are HMACs of the name under ``secret``: the same name gets the same salt on
    every attempt (as a real user would), and no password matches it.
    """
    name = username.encode("utf-8", "surrogatepass")
    return ScramCredential(
        salt=_hmac(secret, b"scram decoy salt\x00" + name)[:SALT_BYTES],
        iterations=DEFAULT_ITERATIONS,
        stored_key=_hmac(secret, b"scram decoy stored key\x00" + name),
        server_key=_hmac(secret, b"scram decoy server key\x00" + name),
    )


# -- the exchange ------------------------------------------------------------------------


def _text(message: bytes) -> str:
    if len(message) > MAX_MESSAGE_BYTES:
        raise ScramError("invalid-encoding", f"message longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("invalid-encoding", "message is not UTF-8") from None
    if "\x00" in text:
        raise ScramError("invalid-encoding", "message contains NUL")
    return text


def _decode_saslname(value: str) -> str:
    """``saslname``: ``,`` and ``=`` travel as ``=2C`` and ``=3D``; any other ``=`` is an error."""
    out: list[str] = []
    index = 0
    while index < len(value):
        ch = value[index]
        if ch == "=":
            escape = value[index + 1 : index + 3]
            if escape == "2C":
                out.append(",")
            elif escape == "3D":
                out.append("=")
            else:
                raise ScramError("invalid-username-encoding", "bad '=' escape in the name")
            index += 3
        else:
            out.append(ch)
            index += 1
    name = "".join(out)
    if not name:
        raise ScramError("invalid-username-encoding", "empty name")
    try:
        return saslprep(name)
    except ValueError as exc:
        raise ScramError("invalid-username-encoding", str(exc)) from None


def _attribute(part: str, key: str) -> str:
    if len(part) < 2 or part[0] != key or part[1] != "=":
        raise ScramError("invalid-encoding", f"expected the '{key}=' attribute")
    return part[2:]


def _check_nonce(nonce: str) -> None:
    if not nonce or len(nonce) > MAX_NONCE_CHARS:
        raise ScramError("invalid-encoding", f"nonce must be 1 to {MAX_NONCE_CHARS} characters")
    if not all("\x21" <= ch <= "\x7e" and ch != "," for ch in nonce):
        raise ScramError("invalid-encoding", "nonce has a character outside printable ASCII")


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError("invalid-encoding", f"{what} is not valid base64") from None


def _check_extensions(parts: list[str]) -> None:
    for part in parts:
        if len(part) < 2 or not part[0].isalpha() or part[1] != "=":
            raise ScramError("invalid-encoding", "malformed attribute")


@dataclass(frozen=True, slots=True)
class _ClientFirst:
    gs2_header: str
    bare: str
    username: str
    nonce: str


def _parse_client_first(message: bytes) -> _ClientFirst:
    """``gs2-header client-first-message-bare`` (RFC 5802 §7); channel binding refused."""
    text = _text(message)
    flag, sep1, rest = text.partition(",")
    authzid, sep2, bare = rest.partition(",")
    if not sep1 or not sep2:
        raise ScramError("invalid-encoding", "missing GS2 header")
    if flag.startswith("p="):
        raise ScramError("channel-binding-not-supported", "use SCRAM-SHA-256 without -PLUS")
    if flag not in ("n", "y"):  # "y": the client could bind but thinks we can't; we can't
        raise ScramError("invalid-encoding", "bad channel binding flag")
    parts = bare.split(",")
    if parts[0].startswith("m="):
        raise ScramError("extensions-not-supported", "mandatory extension")
    if len(parts) < 2:
        raise ScramError("invalid-encoding", "expected n=<name>,r=<nonce>")
    username = _decode_saslname(_attribute(parts[0], "n"))
    nonce = _attribute(parts[1], "r")
    _check_nonce(nonce)
    _check_extensions(parts[2:])
    if authzid and _decode_saslname(_attribute(authzid, "a")) != username:
        raise ScramError("other-error", "an authorization identity is not supported")
    return _ClientFirst(f"{flag},{authzid},", bare, username, nonce)


class _State(Enum):
    START = "start"
    AWAIT_FINAL = "await-final"
    DONE = "done"


class ScramServer:
    """One SCRAM-SHA-256 exchange, seen from the server: ``first``, then ``final``.

    ``lookup`` returns a user's credential or None. A user without one is not told apart:
    the exchange goes on with a ``decoy_credential`` (salt and keys derived from
    ``decoy_secret`` and the name) and fails at the proof with ``invalid-proof``, as a wrong
    password does, after the same work. Limits: a real user whose iteration count is not
    ``DEFAULT_ITERATIONS`` (or whose salt is not 16 bytes) is distinguishable by that.

    ``server_nonce`` fixes the server's half of the nonce (tests reproducing RFC vectors);
    by default it is 18 random bytes from ``secrets``, base64url-encoded.
    """

    def __init__(
        self,
        lookup: Callable[[str], ScramCredential | None],
        *,
        decoy_secret: bytes,
        server_nonce: str | None = None,
    ) -> None:
        if server_nonce is None:
            server_nonce = secrets.token_urlsafe(_SERVER_NONCE_BYTES)
        _check_nonce(server_nonce)
        self._lookup = lookup
        self._decoy_secret = decoy_secret
        self._server_nonce = server_nonce
        self._state = _State.START
        self._first: _ClientFirst | None = None
        self._credential: ScramCredential | None = None
        self._known = False
        self._nonce = ""
        self._server_first = ""
        self.username: str | None = None
        """The name the client claims (after ``first``); authenticated once ``final`` returns."""

    def first(self, client_first: bytes) -> bytes:
        """Read client-first, answer server-first (``r=<nonce>,s=<salt>,i=<iterations>``)."""
        if self._state is not _State.START:
            raise ScramError("other-error", "client-first already received")
        self._state = _State.DONE  # until this message is accepted
        first = _parse_client_first(client_first)
        credential = self._lookup(first.username)
        self._known = credential is not None
        if credential is None:
            credential = decoy_credential(self._decoy_secret, first.username)
        self._first, self._credential, self.username = first, credential, first.username
        self._nonce = first.nonce + self._server_nonce
        salt = base64.b64encode(credential.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={credential.iterations}"
        self._state = _State.AWAIT_FINAL
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        """Check client-final's binding, nonce and proof; answer server-final (``v=...``)."""
        if self._state is not _State.AWAIT_FINAL:
            raise ScramError("other-error", "client-final out of order")
        self._state = _State.DONE
        first, credential = self._first, self._credential
        assert first is not None and credential is not None
        text = _text(client_final)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("invalid-encoding", "missing proof")
        parts = without_proof.split(",")
        if len(parts) < 2:
            raise ScramError("invalid-encoding", "expected c=<binding>,r=<nonce>")
        binding = _b64decode(_attribute(parts[0], "c"), "channel binding")
        if binding != first.gs2_header.encode("utf-8"):
            raise ScramError("channel-bindings-dont-match", "c= is not the GS2 header")
        if not hmac.compare_digest(_attribute(parts[1], "r").encode(), self._nonce.encode()):
            raise ScramError("other-error", "nonce does not match")
        _check_extensions(parts[2:])
        proof = _b64decode(proof_b64, "proof")
        if len(proof) != _KEY_BYTES:
            raise ScramError("invalid-proof", "proof has the wrong length")
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        client_signature = _hmac(credential.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        matches = hmac.compare_digest(hashlib.sha256(client_key).digest(), credential.stored_key)
        server_signature = _hmac(credential.server_key, auth_message)
        if not (matches and self._known):
            raise ScramError("invalid-proof")
        return b"v=" + base64.b64encode(server_signature)
