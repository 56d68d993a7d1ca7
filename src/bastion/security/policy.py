"""The one security policy every front (MQTT now; CoAP and HTTP later) consults.

Fronts ask it the same questions: may this client connect (``authenticate``, or an MQTT 5
enhanced authentication method from ``enhanced_auth_methods``), publish here, subscribe to
this filter, receive this message? Answers come from the password file, the client
certificate and the compiled ACL (``passwords.py``, ``acl.py``); ``reload`` swaps them
atomically (SIGHUP). Nothing here does I/O except the password hash check,
which is deliberately slow and so is run off the event loop by the transport.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from bastion.security.acl import Access, AclDecision, AclRules, ClientAcl
from bastion.security.enhanced_auth import AuthMethod, ScramSha256
from bastion.security.passwords import PasswordFile


class Decision(Enum):
    """Answer of one policy source; the first non-DEFER answer wins, all-DEFER is DENY."""

    ALLOW = "allow"
    DENY = "deny"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a connection is, once authenticated.

    ``username`` is None for anonymous clients, and also for a username that could not be
    verified (no password file, anonymous access on): an unverified name never picks up
    that user's ACL rules.
    """

    client_id: str
    username: str | None
    peer: str  # "host:port" of the remote end, for logs and per-IP limits
    certificate: str | None = None  # identity taken from a verified client certificate


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of authenticating a CONNECT: ``reason_code`` 0 means accepted.

    ``auth_method`` names the MQTT 5 enhanced authentication method whose exchange produced
    this answer (None for a plain CONNECT); ``auth_data`` is the method's last message for
    the client, sent as Authentication Data in CONNACK (SCRAM's server-final).
    """

    reason_code: int
    identity: ClientIdentity | None = None
    message: str = ""
    auth_method: str | None = None
    auth_data: bytes | None = None


# MQTT 5 reason codes used here (security sits beside, not above, the MQTT package).
_NOT_AUTHORIZED = 0x87
_BAD_USER_NAME_OR_PASSWORD = 0x86
_CLIENT_IDENTIFIER_NOT_VALID = 0x85

_OPEN = AclDecision(True, "no ACL configured and anonymous access on (development mode)")
_CLOSED = AclDecision(False, None)


class Policy:
    """Authentication and authorization decisions for every front.

    ACL modes: with an ACL (file or TOML), every operation is checked against it, deny by
    default. Without one, the broker is *open* only in development mode
    (``allow_anonymous``); otherwise every topic operation is denied.

    Enhanced authentication: ``auth_methods`` are plugins (``enhanced_auth.AuthMethod``);
    SCRAM-SHA-256 is added whenever the password file holds a SCRAM credential.
    """

    def __init__(
        self,
        *,
        allow_anonymous: bool = False,
        passwords: PasswordFile | None = None,
        acl: AclRules | None = None,
        use_certificate_identity: bool = False,
        client_id_patterns: Sequence[str] = (),
        auth_methods: Sequence[AuthMethod] = (),
        require_will: Sequence[str] = (),
        user_max_qos: Mapping[str, int] | None = None,
    ) -> None:
        self.allow_anonymous = allow_anonymous
        self.use_certificate_identity = use_certificate_identity
        self.client_id_patterns = tuple(client_id_patterns)
        self.require_will = tuple(require_will)
        self.user_max_qos: Mapping[str, int] = MappingProxyType(dict(user_max_qos or {}))
        self._passwords = passwords
        self._acl = acl
        self._bound: dict[tuple[str | None, str], ClientAcl] = {}
        self._plugins = tuple(auth_methods)
        self._methods = _auth_methods(passwords, self._plugins)

    # -- configuration -------------------------------------------------------------

    @property
    def passwords(self) -> PasswordFile | None:
        return self._passwords

    @property
    def acl(self) -> AclRules | None:
        return self._acl

    @property
    def enhanced_auth_methods(self) -> Mapping[str, AuthMethod]:
        """MQTT 5 Authentication Method name -> method (read-only; rebuilt on ``reload``)."""
        return self._methods

    @property
    def open_access(self) -> bool:
        """True when no ACL is configured and anonymous access is on (development)."""
        return self._acl is None and self.allow_anonymous

    def reload(self, *, passwords: PasswordFile | None, acl: AclRules | None) -> None:
        """Swap in freshly loaded credentials and rules; compiled per-client ACLs are dropped."""
        self._passwords = passwords
        self._acl = acl
        self._bound.clear()
        self._methods = _auth_methods(passwords, self._plugins)

    # -- authentication ------------------------------------------------------------

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        peer: str,
        certificate_identity: str | None = None,
    ) -> AuthResult:
        """Decide whether a client may connect (slow on purpose when a password is checked)."""
        if certificate_identity is not None and self.use_certificate_identity:
            return self._admit_client_id(
                ClientIdentity(client_id, certificate_identity, peer, certificate_identity)
            )
        if username is None:
            if password is not None:
                return AuthResult(_BAD_USER_NAME_OR_PASSWORD, message="password without username")
            if self.allow_anonymous:
                return AuthResult(0, ClientIdentity(client_id, None, peer, certificate_identity))
            return AuthResult(_NOT_AUTHORIZED, message="anonymous access is disabled")
        if self._passwords is None:
            if self.allow_anonymous:
                # Nothing to verify the name against: treat the client as anonymous.
                return AuthResult(0, ClientIdentity(client_id, None, peer, certificate_identity))
            return AuthResult(_BAD_USER_NAME_OR_PASSWORD, message="no password file is configured")
        if not self._passwords.verify(username, password or b""):
            return AuthResult(_BAD_USER_NAME_OR_PASSWORD, message="bad username or password")
        return self._admit_client_id(
            ClientIdentity(client_id, username, peer, certificate_identity)
        )

    def authenticated(
        self,
        client_id: str,
        username: str,
        peer: str,
        *,
        connect_username: str | None = None,
        certificate_identity: str | None = None,
    ) -> AuthResult:
        """Admit a user an enhanced authentication method verified (its ``Success``).

        A User Name in the CONNECT, or a certificate identity used as username, must be that
        same user (0x86 otherwise); then the client-id rules apply as for passwords.
        """
        if connect_username is not None and connect_username != username:
            return AuthResult(
                _BAD_USER_NAME_OR_PASSWORD,
                message="the User Name differs from the authenticated identity",
            )
        if (
            certificate_identity is not None
            and self.use_certificate_identity
            and certificate_identity != username
        ):
            return AuthResult(
                _BAD_USER_NAME_OR_PASSWORD,
                message="the certificate identity differs from the authenticated identity",
            )
        return self._admit_client_id(
            ClientIdentity(client_id, username, peer, certificate_identity)
        )

    def _admit_client_id(self, identity: ClientIdentity) -> AuthResult:
        """Apply the client-id rules: an authenticated user may use only matching ids."""
        if not self.client_id_patterns or identity.username is None:
            return AuthResult(0, identity)
        for pattern in self.client_id_patterns:
            if _client_id_matches(pattern, identity.username, identity.client_id):
                return AuthResult(0, identity)
        allowed = ", ".join(self.client_id_patterns)
        return AuthResult(
            _CLIENT_IDENTIFIER_NOT_VALID,
            message=f"client id not allowed for this user (allowed: {allowed})",
        )

    # -- authorization -------------------------------------------------------------

    def check(self, identity: ClientIdentity, topic: str, access: Access) -> AclDecision:
        """The ACL decision (with the rule that decided) for one operation."""
        if self._acl is None:
            return _OPEN if self.allow_anonymous else _CLOSED
        key = (identity.username, identity.client_id)
        bound = self._bound.get(key)
        if bound is None:
            if len(self._bound) >= 100_000:
                self._bound.clear()
            bound = self._bound[key] = self._acl.bind(identity.username, identity.client_id)
        return bound.check(topic, access)

    def may_publish(self, identity: ClientIdentity, topic: str) -> bool:
        """May this client publish (or leave a will) on ``topic``?"""
        return self.check(identity, topic, "write").allowed

    def may_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """May this client subscribe to ``topic_filter``?"""
        return self.check(identity, topic_filter, "subscribe").allowed

    def may_receive(self, identity: ClientIdentity, topic: str) -> bool:
        """May this client receive a message published on ``topic``?"""
        return self.check(identity, topic, "read").allowed

    def will_required(self, username: str | None) -> bool:
        """Must this account set a Last Will? (``require_will`` username globs.)

        Device accounts that must be noticed when they vanish are listed here, so a device
        cannot connect without the will that reports it offline.
        """
        if username is None:
            return False
        return any(fnmatch.fnmatchcase(username, pattern) for pattern in self.require_will)

    def max_qos_for(self, username: str | None) -> int | None:
        """The QoS ceiling of this account (``[security.users.NAME] max_qos``), if any.

        Only a verified username has one: anonymous clients get the listener's and the
        server's ceilings alone.
        """
        if username is None:
            return None
        return self.user_max_qos.get(username)

    def forget(self, identity: ClientIdentity) -> None:
        """Drop the compiled ACL of a client that has gone (keeps the cache small)."""
        self._bound.pop((identity.username, identity.client_id), None)


def _auth_methods(
    passwords: PasswordFile | None, plugins: Sequence[AuthMethod]
) -> Mapping[str, AuthMethod]:
    """The registry: SCRAM-SHA-256 when the password file has SCRAM users, then plugins."""
    methods: dict[str, AuthMethod] = {}
    if passwords is not None and passwords.has_scram:
        scram = ScramSha256(passwords.scram_credential, decoy_secret=passwords.decoy_secret())
        methods[scram.name] = scram
    for method in plugins:
        methods[method.name] = method
    return MappingProxyType(methods)


def _client_id_matches(pattern: str, username: str, client_id: str) -> bool:
    """Glob match (``*`` and ``?``) of a client id against a pattern with ``%u`` filled in."""
    escaped = "".join(f"[{ch}]" if ch in "*?[" else ch for ch in username)
    return fnmatch.fnmatchcase(client_id, pattern.replace("%u", escaped))


__all__ = ["AuthResult", "ClientIdentity", "Decision", "Policy"]
