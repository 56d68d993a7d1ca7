"""The one security policy every front (MQTT now; CoAP and HTTP later) consults.

The broker core asks it: may this client connect, publish here, subscribe to this filter,
receive this message? This first version knows only "anonymous allowed or not" and allows
every authorised operation; the hardening issue adds passwords, certificates, ACLs and limits
behind the same questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Decision(Enum):
    """Answer of one policy source; the first non-DEFER answer wins, all-DEFER is DENY."""

    ALLOW = "allow"
    DENY = "deny"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a connection is, once authenticated."""

    client_id: str
    username: str | None
    peer: str  # "host:port" of the remote end, for logs and per-IP limits


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of authenticating a CONNECT: ``reason_code`` 0 means accepted."""

    reason_code: int
    identity: ClientIdentity | None = None
    message: str = ""


# MQTT 5 reason codes used here (kept local: security sits below the MQTT codec helpers).
_NOT_AUTHORIZED = 0x87
_BAD_USER_NAME_OR_PASSWORD = 0x86


class Policy:
    """Authentication and authorization decisions for every front."""

    def __init__(self, *, allow_anonymous: bool) -> None:
        self.allow_anonymous = allow_anonymous

    def authenticate(
        self, client_id: str, username: str | None, password: bytes | None, peer: str
    ) -> AuthResult:
        """Decide whether a client may connect."""
        if username is None and password is None:
            if self.allow_anonymous:
                return AuthResult(0, ClientIdentity(client_id, None, peer))
            return AuthResult(_NOT_AUTHORIZED, message="anonymous access is disabled")
        if self.allow_anonymous:
            # No credential store is configured yet: credentials cannot be verified, so
            # they are ignored exactly as anonymous access would be.
            return AuthResult(0, ClientIdentity(client_id, username, peer))
        return AuthResult(
            _BAD_USER_NAME_OR_PASSWORD, message="no password file configured to verify credentials"
        )

    def may_publish(self, identity: ClientIdentity, topic: str) -> bool:
        """May this client publish (or leave a will) on ``topic``?"""
        return True

    def may_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """May this client subscribe to ``topic_filter``?"""
        return True

    def may_receive(self, identity: ClientIdentity, topic: str) -> bool:
        """May this client receive a message published on ``topic``?"""
        return True


__all__ = ["AuthResult", "ClientIdentity", "Decision", "Policy"]
