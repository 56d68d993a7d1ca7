"""Builds the security side of a running broker from settings, and reloads it on SIGHUP.

Loads the password file and ACL into one ``Policy``, builds the TLS context holders of the
TLS listeners and the ``SecurityMonitor`` that turns security events into audit lines and
``$SYS/security/...`` messages. The abuse defences are assembled in ``security/defences.py``.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import structlog

from bastion.config.schema import (
    ListenerSettings,
    SecuritySettings,
    Settings,
    TlsListenerSettings,
)
from bastion.errors import ConfigError
from bastion.security.acl import AclRules, acl_from_toml
from bastion.security.audit import AuditRecord, AuditTrail, SecurityEvent
from bastion.security.passwords import PasswordFile
from bastion.security.policy import Policy
from bastion.security.tls import ServerContextHolder, TlsSettings

log = structlog.get_logger("bastion.security")


def load_credentials(security: SecuritySettings) -> tuple[PasswordFile | None, AclRules | None]:
    """Read the password file and the ACL named by the settings (ConfigError if bad)."""
    passwords = PasswordFile.load(security.password_file) if security.password_file else None
    acl: AclRules | None = None
    if security.acl_file is not None:
        acl = AclRules.load(security.acl_file)
    elif security.acl is not None:
        acl = acl_from_toml(security.acl, source="security.acl")
    return passwords, acl


def build_policy(security: SecuritySettings) -> Policy:
    """The policy for these settings; warns about every weakened or incomplete default."""
    passwords, acl = load_credentials(security)
    policy = Policy(
        allow_anonymous=security.allow_anonymous,
        passwords=passwords,
        acl=acl,
        use_certificate_identity=True,  # only listeners configured for it pass an identity
        client_id_patterns=security.client_id_patterns,
        require_will=security.require_will,
        user_max_qos={
            name: user.max_qos for name, user in security.users.items() if user.max_qos is not None
        },
    )
    if security.allow_anonymous:
        log.warning(
            "security.anonymous_allowed",
            detail="allow_anonymous is on: any client may connect without credentials",
        )
    if acl is None and security.allow_anonymous:
        log.warning(
            "security.acl_open",
            detail="no ACL configured and anonymous access on: every client may use every topic",
        )
    elif acl is None:
        log.warning(
            "security.acl_missing",
            detail="no ACL configured: every publish and subscribe is denied (deny by default)",
        )
    return policy


def tls_settings(tls: TlsListenerSettings) -> TlsSettings:
    """The ``security.tls`` settings value for a listener's ``[listeners.tls]`` table."""
    return TlsSettings(
        certfile=Path(tls.certfile),
        keyfile=Path(tls.keyfile),
        cafile=Path(tls.cafile) if tls.cafile else None,
        min_version=tls.min_version,
        require_certificate=tls.require_certificate,
        use_identity_as_username=tls.use_identity_as_username,
        crlfile=Path(tls.crlfile) if tls.crlfile else None,
    )


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plain_listener(listener: ListenerSettings) -> None:
    """Plain TCP off loopback sends credentials and data in clear text: say so every start."""
    if listener.tls is None and not is_loopback(listener.host):
        log.warning(
            "security.plain_listener",
            address=listener.address,
            detail="plain TCP on a non-loopback address: passwords and data travel unencrypted; "
            "use a TLS listener",
        )


Publisher = Callable[[str, bytes], None]


class SecurityMonitor:
    """Security events -> aggregated JSON audit lines, ``$SYS/security/...`` and counters.

    ``record`` is the sink the broker core and the transport call (quick, never raises);
    ``tick`` writes due summaries; ``close`` writes what is left.
    """

    def __init__(self, audit_path: str | None, publish: Publisher | None = None) -> None:
        self.trail = AuditTrail()
        self._publish = publish
        self._next_counters = 0.0
        self._published_counts: dict[str, int] = {}
        self._file: IO[str] | None = None
        if audit_path is not None:
            try:
                self._file = Path(audit_path).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(
                    f"{audit_path}: cannot open the audit log: {exc.strerror or exc}"
                ) from None

    def set_publisher(self, publish: Publisher | None) -> None:
        self._publish = publish

    def record(self, event: SecurityEvent, now: float) -> None:
        try:
            self._emit(self.trail.record(event, now))
        except Exception:  # an audit problem must never break the broker
            log.exception("audit.failed")

    def tick(self, now: float) -> None:
        self._emit(self.trail.flush(now))

    def close(self, now: float) -> None:
        self._emit(self.trail.drain(now))
        if self._file is not None:
            self._file.close()
            self._file = None

    def counters(self) -> dict[str, int]:
        return dict(self.trail.counters())

    def publish_counters(self, now: float, interval: float) -> None:
        """Every ``interval`` s: ``$SYS/security/counters/<kind>`` for counts that changed.

        The metrics view of the audit trail (admin-only like all of ``$SYS``); 0 disables.
        """
        if interval <= 0 or self._publish is None or now < self._next_counters:
            return
        self._next_counters = now + interval
        for kind, count in self.trail.counters().items():
            if self._published_counts.get(kind) != count:
                self._published_counts[kind] = count
                self._publish(f"$SYS/security/counters/{kind}", str(count).encode())

    def _emit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        stamp = datetime.fromtimestamp(time.time(), UTC)
        for record in records:
            line = record.to_json(stamp)
            if self._file is not None:
                self._file.write(line + "\n")
            else:
                fields = {k: v for k, v in json.loads(line).items() if v is not None}
                name = str(fields.pop("event", "security.event"))
                fields.pop("ts", None)
                fields.pop("level", None)
                log.warning(name, **fields)
            if self._publish is not None:
                self._publish(record.sys_topic, record.sys_payload(stamp))


def tls_holders(settings: Settings) -> dict[int, ServerContextHolder]:
    """A context holder per TLS listener (by listener index); ConfigError on bad files."""
    holders: dict[int, ServerContextHolder] = {}
    for index, listener in enumerate(settings.listeners):
        if listener.tls is not None:
            holders[index] = ServerContextHolder(tls_settings(listener.tls))
    return holders


__all__ = [
    "SecurityMonitor",
    "build_policy",
    "is_loopback",
    "load_credentials",
    "tls_holders",
    "warn_plain_listener",
]
