"""Test kit for the broker core: a recording ``FakeLink``, a fake clock and client helpers.

Used by the ``test_core_*.py`` modules; everything is synchronous and time is a float that
the test advances by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bastion.broker.core import Broker
from bastion.broker.journal import Journal
from bastion.broker.sessions import Session
from bastion.broker.stats import BrokerStats
from bastion.config.schema import MqttSettings
from bastion.mqtt.packets import (
    NO_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from bastion.security.audit import SecurityEvent
from bastion.security.policy import ClientIdentity, Policy


@dataclass
class FakeLink:
    """A ``ClientLink`` that records what the broker sends and whether it closed it."""

    protocol_version: int = 5
    peer: str = "127.0.0.1:50000"
    max_publish_payload: int | None = None  # PUBLISH with a bigger payload is "too large"
    sent: list[Packet] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    keep_alive: int | None = None
    history: list[Packet | str] = field(default_factory=list)  # sends, "close", "pause", ...
    reading: bool = True  # False while the broker holds this publisher (backpressure)

    def send(self, packet: Packet) -> bool:
        if (
            isinstance(packet, Publish)
            and self.max_publish_payload is not None
            and len(packet.payload) > self.max_publish_payload
        ):
            return False
        self.sent.append(packet)
        self.history.append(packet)
        return True

    def close(self, reason_code: int | None = None) -> None:
        self.closes.append(reason_code)
        self.history.append("close")

    def set_keep_alive(self, seconds: int) -> None:
        self.keep_alive = seconds

    def pause_reading(self) -> None:
        self.reading = False
        self.history.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.history.append("resume")

    @property
    def closed(self) -> bool:
        return bool(self.closes)


@dataclass
class EventRecorder:
    """A security event sink that keeps every event with the ``now`` it came with."""

    events: list[SecurityEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def __call__(self, event: SecurityEvent, now: float) -> None:
        self.events.append(event)
        self.times.append(now)

    def details(self) -> list[str]:
        return [event.detail for event in self.events]


@dataclass
class LogRecorder:
    """Stands in for the structlog logger of ``SecurityLog``: (level, event, fields)."""

    lines: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    def info(self, event: str, **fields: object) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event, fields))

    def exception(self, event: str, **fields: object) -> None:
        self.lines.append(("exception", event, fields))

    def events(self, prefix: str = "security.") -> list[str]:
        return [event for _, event, _ in self.lines if event.startswith(prefix)]


class DenyingPolicy(Policy):
    """Anonymous access, with chosen topics denied for publish, subscribe or receive."""

    def __init__(
        self,
        *,
        publish: tuple[str, ...] = (),
        subscribe: tuple[str, ...] = (),
        receive: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(allow_anonymous=True)
        self.deny_publish = publish
        self.deny_subscribe = subscribe
        self.deny_receive = receive  # (client id, topic)

    def may_publish(self, identity: ClientIdentity, topic: str) -> bool:
        return topic not in self.deny_publish

    def may_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        return topic_filter not in self.deny_subscribe

    def may_receive(self, identity: ClientIdentity, topic: str) -> bool:
        return (identity.client_id, topic) not in self.deny_receive


class Harness:
    """A broker with a fake clock (``now``, in seconds) and helpers to drive clients."""

    def __init__(self, policy: Policy | None = None, **settings: object) -> None:
        """``settings`` are MqttSettings fields, and ``journal`` (a ``Journal``) if any."""
        journal = settings.pop("journal", None)
        assert journal is None or isinstance(journal, Journal)
        values: dict[str, object] = {"sys_interval": 0}
        values.update(settings)
        self.settings = MqttSettings.model_validate(values)
        self.events = EventRecorder()
        self.broker = Broker(
            self.settings,
            policy or Policy(allow_anonymous=True),
            version="9.9.9",
            on_security_event=self.events,
            journal=journal,
        )
        self.after_connect: Callable[[], object] | None = None
        self.log = LogRecorder()
        self.broker.security.logger = self.log
        self.now = 100.0

    @property
    def stats(self) -> BrokerStats:
        return self.broker.stats

    def advance(self, seconds: float) -> float | None:
        """Move the clock forward and let the broker run its timers."""
        self.now += seconds
        return self.broker.tick(self.now)

    def connect(
        self,
        client_id: str,
        *,
        version: int = 5,
        clean: bool = True,
        expiry: int | None = None,
        will: Will | None = None,
        keep_alive: int = 60,
        properties: Properties = NO_PROPERTIES,
        link: FakeLink | None = None,
        username: str | None = None,
        listener_max_qos: int | None = None,
    ) -> Client:
        """Connect a client; asserts the CONNACK is a success."""
        client = self.try_connect(
            client_id,
            version=version,
            clean=clean,
            expiry=expiry,
            will=will,
            keep_alive=keep_alive,
            properties=properties,
            link=link,
            username=username,
            listener_max_qos=listener_max_qos,
        )
        assert client.session is not None, client.link.sent
        assert client.connack.reason_code == 0
        return client

    def try_connect(
        self,
        client_id: str,
        *,
        version: int = 5,
        clean: bool = True,
        expiry: int | None = None,
        will: Will | None = None,
        keep_alive: int = 60,
        properties: Properties = NO_PROPERTIES,
        link: FakeLink | None = None,
        username: str | None = None,
        listener_max_qos: int | None = None,
    ) -> Client:
        """Send a CONNECT; the result may be refused (``client.session is None``).

        ``listener_max_qos`` stands for the QoS ceiling of the listener it came through.
        """
        if expiry is not None:
            properties = replace(properties, session_expiry_interval=expiry)
        link = link or FakeLink(protocol_version=version)
        packet = Connect(
            version,
            client_id,
            clean_start=clean,
            keep_alive=keep_alive,
            will=will,
            username=username,
            properties=properties,
        )
        session = self.broker.connect(link, packet, self.now, listener_max_qos=listener_max_qos)
        if self.after_connect is not None:
            self.after_connect()  # e.g. a group commit a durable session's CONNACK waits for
        return Client(self, link, session)


class Client:
    """One connected (or refused) client: sends packets and reads what it was sent."""

    def __init__(self, harness: Harness, link: FakeLink, session: Session | None) -> None:
        self.harness = harness
        self.link = link
        self.session = session
        self._next_id = 1
        first = link.sent[0] if link.sent else None
        assert isinstance(first, Connack), link.sent
        self.connack: Connack = first
        del link.sent[0]

    @property
    def live(self) -> Session:
        assert self.session is not None
        return self.session

    def send(self, packet: Packet) -> None:
        self.harness.broker.receive(self.live, packet, self.harness.now)

    def take(self) -> list[Packet]:
        """Everything sent to this client since the last ``take``."""
        packets = list(self.link.sent)
        self.link.sent.clear()
        return packets

    def take_publishes(self) -> list[Publish]:
        packets = self.take()
        assert all(isinstance(p, Publish) for p in packets), packets
        return [p for p in packets if isinstance(p, Publish)]

    def next_id(self) -> int:
        packet_id = self._next_id
        self._next_id += 1
        return packet_id

    def publish(
        self,
        topic: str,
        payload: bytes = b"x",
        *,
        qos: int = 0,
        retain: bool = False,
        packet_id: int | None = None,
        properties: Properties = NO_PROPERTIES,
        dup: bool = False,
    ) -> int | None:
        if qos and packet_id is None:
            packet_id = self.next_id()
        self.send(Publish(topic, payload, qos, retain, dup, packet_id, properties))
        return packet_id

    def subscribe(
        self, *subscriptions: Subscription | str, identifier: int | None = None, qos: int = 0
    ) -> Suback:
        """Subscribe and return the SUBACK (other packets sent after it stay unread)."""
        subs = tuple(
            s if isinstance(s, Subscription) else Subscription(s, qos) for s in subscriptions
        )
        props = (
            NO_PROPERTIES
            if identifier is None
            else Properties(subscription_identifiers=(identifier,))
        )
        before = len(self.link.sent)
        self.send(Subscribe(self.next_id(), subs, props))
        suback = self.link.sent.pop(before)
        assert isinstance(suback, Suback), suback
        return suback

    def unsubscribe(self, *filters: str) -> Unsuback:
        self.send(Unsubscribe(self.next_id(), filters))
        reply = self.link.sent.pop()
        assert isinstance(reply, Unsuback), reply
        return reply

    def ack(self, packet: Publish) -> None:
        """Acknowledge a received QoS 1 or 2 PUBLISH completely."""
        assert packet.packet_id is not None
        if packet.qos == 1:
            self.send(Puback(packet.packet_id))
            return
        self.send(Pubrec(packet.packet_id))
        rel = self.link.sent.pop()
        assert rel == Pubrel(packet.packet_id), rel
        self.send(Pubcomp(packet.packet_id))

    def disconnect(self, reason: int = 0, properties: Properties = NO_PROPERTIES) -> None:
        """Send DISCONNECT, then let the transport report the connection's end."""
        self.send(Disconnect(reason, properties))
        self.drop()

    def drop(self) -> None:
        """The network connection ends (the transport calls ``connection_lost``)."""
        self.harness.broker.connection_lost(self.live, self.harness.now)


__all__ = ["Client", "DenyingPolicy", "EventRecorder", "FakeLink", "Harness", "LogRecorder"]
