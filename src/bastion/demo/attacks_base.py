"""What every attack of ``bastion demo --attack`` shares: the target and the result types, the
names of the controls, and the run's context (TLS context, the observer, a fresh loopback source
address per attack, markers that tell our payloads apart, raw connects and will clean-up).

``attacks.py`` runs the list; ``attacks_entry.py`` and ``attacks_inside.py`` are the attacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from bastion.config import Settings, load_settings
from bastion.demo.access import SENSORS
from bastion.demo.attacks_paho import Observer, PahoProbe, Watch
from bastion.demo.attacks_wire import (
    CONNACK,
    ConnAck,
    Dial,
    RawSession,
    WillSpec,
    WireError,
    decode_connack,
    encode_connect,
    encode_disconnect,
)
from bastion.errors import ConfigError

__all__ = [
    "ACL",
    "AUTHENTICATION",
    "BAN",
    "BOUNDED_REDELIVERY",
    "CLIENT_ID_BINDING",
    "CONNECT_WAIT",
    "DEVICE_WILL_DELAY",
    "MARKER_KEY",
    "MAX_PACKET_SIZE",
    "RATE_LIMIT",
    "SETTLE",
    "TLS_REQUIRED",
    "UTF8_VALIDATION",
    "AttackContext",
    "AttackResult",
    "AttackTarget",
    "MissingCredentialError",
    "RawConnect",
    "SourceAddresses",
    "load_broker_settings",
]

# The controls, as the demo groups its results ("TLS 1.x minimum" is named by what it observed).
AUTHENTICATION: Final = "authentication"
BAN: Final = "ban"
TLS_REQUIRED: Final = "TLS required"
UTF8_VALIDATION: Final = "UTF-8 validation"
ACL: Final = "ACL"
CLIENT_ID_BINDING: Final = "client id binding"
MAX_PACKET_SIZE: Final = "max packet size"
RATE_LIMIT: Final = "rate limit"
BOUNDED_REDELIVERY: Final = "bounded redelivery"

CONNECT_WAIT: Final = 6.0  # TCP + TLS + an argon2id check on a busy machine
SETTLE: Final = 0.75  # how long a message takes, at most, to reach the observer here
DEVICE_WILL_DELAY: Final = 30  # seconds; the session outlives a cut connection this long
MARKER_KEY: Final = "bastion_attack"  # every payload the attacker sends carries this key


@dataclass(frozen=True, slots=True)
class AttackTarget:
    """The running demo broker and the credentials of its clients."""

    host: str
    tls_port: int
    cafile: Path
    state_dir: Path
    credentials: Mapping[str, str]  # client name -> password
    plain_port: int | None = None


@dataclass(frozen=True, slots=True)
class AttackResult:
    """One attempt: what was tried, the control that should stop it, whether it did (as
    observed), and what was observed."""

    name: str
    control: str
    blocked: bool
    detail: str


class MissingCredentialError(LookupError):
    """The target has no password for a client an attack needs."""


def load_broker_settings(state_dir: Path) -> Settings | None:
    """The broker's ``bastion.toml`` in the state directory, if there is a readable one: it
    gives the attacker the configured limits to compare what it observes with."""
    path = state_dir / "bastion.toml"
    if not path.is_file():
        return None
    try:
        return load_settings(path)
    except (ConfigError, OSError):
        return None


def _loopback_ipv4(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True


class SourceAddresses:
    """A loopback address of its own for each attack (127.a.b.N), when the broker is on this
    machine and the system routes all of 127.0.0.0/8 (Linux does).

    The broker's back-off and bans count per source IP: attacks from 127.0.0.1 would slow
    down, then ban, the demo's own clients, which connect from there.
    """

    def __init__(self, host: str) -> None:
        self._prefix: str | None = None
        self._next = 0
        if _loopback_ipv4(host):
            prefix = f"127.{64 + secrets.randbelow(128)}.{secrets.randbelow(256)}"
            if _can_bind(f"{prefix}.1"):
                self._prefix = prefix

    @property
    def available(self) -> bool:
        return self._prefix is not None

    def next(self) -> str | None:
        """A fresh address, or None (connect from wherever the system chooses)."""
        if self._prefix is None:
            return None
        self._next = self._next % 254 + 1
        return f"{self._prefix}.{self._next}"


@dataclass(frozen=True, slots=True)
class RawConnect:
    """A raw CONNECT's outcome: the session (None if the connection never opened), the
    CONNACK (None without one), how it went and what happened, in words.

    ``stage``: "connack" (an answer came), "unreachable" (the connection or its TLS handshake
    failed), "closed" (closed after CONNECT, unanswered) or "silent" (no answer in time).
    """

    session: RawSession | None
    connack: ConnAck | None
    stage: Literal["connack", "unreachable", "closed", "silent"]
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.connack is not None and self.connack.reason == 0


@dataclass
class AttackContext:
    """One run of the attack list against one broker."""

    target: AttackTarget
    tls: ssl.SSLContext
    sources: SourceAddresses
    settings: Settings | None
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    observer: Observer | None = None
    observer_problem: str | None = None
    tls_minimum: str | None = None  # "1.2" or "1.3", once probed
    # every client opened, so that one an attack left behind (cut off by its time budget,
    # or cancelled) is still closed at the end of the run
    _probes: list[PahoProbe] = field(default_factory=list, repr=False)
    _sessions: list[RawSession] = field(default_factory=list, repr=False)

    def probe(self, dial: Dial, client_id: str, user: str | None, **kwargs: Any) -> PahoProbe:
        """A paho client as ``user`` (None: anonymous), closed at the latest by ``close_all``."""
        password = None if user is None else self.password(user)
        probe = PahoProbe(dial, client_id=client_id, username=user, password=password, **kwargs)
        self._probes.append(probe)
        return probe

    def close_all(self) -> None:
        """Drop whatever an attack left open (blocking: paho's threads are joined)."""
        for session in self._sessions:
            session.abort()
        for probe in self._probes:
            probe.close()
        self._sessions.clear()
        self._probes.clear()

    # ------------------------------------------------------------ names and markers

    def dial(self, *, tls: bool = True, port: int | None = None) -> Dial:
        """Where to connect: the TLS port (or ``port``) from a fresh source address."""
        return Dial(
            self.target.host,
            port if port is not None else self.target.tls_port,
            self.tls if tls else None,
            self.sources.next(),
        )

    def dial_from(self, source: str | None) -> Dial:
        """The TLS port, from ``source`` (an address an earlier dial got)."""
        return Dial(self.target.host, self.target.tls_port, self.tls, source)

    def password(self, user: str) -> str:
        password = self.target.credentials.get(user)
        if password is None:
            raise MissingCredentialError(f"the target has no password for {user!r}")
        return password

    def client_id(self, user: str, role: str) -> str:
        """``sensor1-flood-1a2b3c``: the user's own prefix, as ``%u-*`` client ids require."""
        return f"{user}-{role}-{self.run_id}"

    def marker(self, attack: str, **extra: int | str) -> bytes:
        """A payload that says it is ours (and which attack of which run it belongs to)."""
        return json.dumps({MARKER_KEY: attack, "run": self.run_id, **extra}).encode()

    def ours(self, attack: str) -> Callable[[str | None, bytes], bool]:
        """Matches deliveries of this run's ``attack`` payloads, on any topic."""
        needle = f'"{MARKER_KEY}": "{attack}", "run": "{self.run_id}"'.encode()
        return lambda _topic, payload: needle in payload

    def device_will(self, user: str) -> WillSpec | None:
        """The will a device account must register (``require_will``), made harmless: on the
        sensor's own data topic, not retained, delayed, and with a payload that is no reading.
        Never the status topic, whose "offline" would raise a false alarm."""
        topics = {sensor.name: sensor.topic for sensor in SENSORS}
        topic = topics.get(user)
        if topic is None:
            return None
        return WillSpec(topic, self.marker("will"), delay=DEVICE_WILL_DELAY)

    # ------------------------------------------------------------ observing

    def watch(self, match: Callable[[str | None, bytes], bool]) -> Watch | None:
        return None if self.observer is None else self.observer.watch(match)

    def seen(self, watch: Watch | None) -> int | None:
        """How many deliveries ``watch`` matched so far (None: nothing is observing)."""
        if watch is None or self.observer is None:
            return None
        return self.observer.snapshot(watch)[0]

    async def settle(self, watch: Watch | None, seconds: float = SETTLE) -> int | None:
        """Give deliveries time to arrive, then count them (closing the watch)."""
        await asyncio.sleep(seconds)
        count = self.seen(watch)
        if watch is not None and self.observer is not None:
            self.observer.unwatch(watch)
        return count

    def unobserved(self) -> str:
        return f"nothing observed the deliveries ({self.observer_problem or 'no observer'})"

    # ------------------------------------------------------------ raw clients

    async def raw_connect(
        self,
        user: str | None,
        client_id: str,
        *,
        dial: Dial | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
        will: WillSpec | None = None,
        password: str | None = None,
        timeout: float = CONNECT_WAIT,
    ) -> RawConnect:
        """Open a raw connection and send CONNECT as ``user`` (None: anonymous)."""
        dial = dial or self.dial()
        try:
            session = await RawSession.open(dial, timeout)
            self._sessions.append(session)
        except TimeoutError:
            return RawConnect(None, None, "silent", f"no connection within {timeout:g} s")
        except OSError as exc:
            return RawConnect(None, None, "unreachable", f"connection refused or closed: {exc}")
        if user is not None and password is None:
            password = self.password(user)
        packet = encode_connect(
            client_id,
            username=user,
            password=password,
            clean_start=clean_start,
            session_expiry=session_expiry,
            will=will,
        )
        if not await session.send(packet, timeout):
            return RawConnect(session, None, "closed", f"connection closed: {session.closed}")
        try:
            answer = await session.expect((CONNACK,), timeout)
        except TimeoutError:
            return RawConnect(session, None, "silent", f"no CONNACK within {timeout:g} s")
        if answer is None:
            return RawConnect(
                session, None, "closed", f"closed without a CONNACK ({session.closed})"
            )
        try:
            connack = decode_connack(answer)
        except WireError as exc:
            return RawConnect(session, None, "closed", f"unreadable CONNACK: {exc}")
        return RawConnect(session, connack, "connack")

    async def defuse_will(self, user: str, client_id: str, will: WillSpec | None) -> None:
        """After the broker cut a device connection, come back to its session before the
        delayed will fires, then leave normally with the session ended: nothing is published.
        Best effort (if it fails, the will is the harmless marker of ``device_will``)."""
        if will is None:
            return
        attempt = await self.raw_connect(user, client_id, clean_start=False, will=will)
        session = attempt.session
        if session is None:
            return
        with contextlib.suppress(TimeoutError):
            if attempt.accepted:
                await session.send(encode_disconnect(0, session_expiry=0), 2.0)
        await session.close()
