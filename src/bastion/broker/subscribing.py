"""SUBSCRIBE and UNSUBSCRIBE from clients: checks, SUBACK/UNSUBACK codes, retained messages.

``core.Broker.receive`` hands these packets here. Each filter is validated, held to the
server's bounds (length, depth, count per client: ``security/validation.py`` and
``[mqtt]``), offered only if the server supports its kind, and checked against the ACL;
granted ones go into the ``SubscriptionTrie`` (and the journal, for durable sessions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import structlog

from bastion.broker.delivery import Router
from bastion.broker.journal import durable, subscription_record
from bastion.broker.securitylog import SecurityLog
from bastion.broker.sessions import Session, SessionRegistry
from bastion.broker.stats import Defence
from bastion.broker.subscriptions import SubscriptionEntry, SubscriptionTrie
from bastion.config.schema import MqttSettings
from bastion.errors import ProtocolError
from bastion.mqtt.packets import (
    ProtocolVersion,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)
from bastion.mqtt.reason_codes import ReasonCode
from bastion.mqtt.topics import SHARE_PREFIX, is_wildcard, parse_shared, validate_topic_filter
from bastion.security.policy import Policy
from bastion.security.validation import MessageRules

log = structlog.get_logger("bastion.broker")

_V5 = ProtocolVersion.MQTT_5
_SUBACK_FAILURE_V311 = 0x80
_SUBSCRIPTION_QUOTA = "too many subscriptions (max_subscriptions_per_client)"

ProtocolErrorHandler = Callable[[Session, int, str, float], None]


class SubscriptionRequests:
    """Handles SUBSCRIBE/UNSUBSCRIBE and re-checks subscriptions after an ACL reload."""

    def __init__(  # noqa: PLR0917 - the parts of the core this handler works with
        self,
        settings: MqttSettings,
        policy: Policy,
        sessions: SessionRegistry,
        subscriptions: SubscriptionTrie,
        router: Router,
        rules: MessageRules,
        security: SecurityLog,
        *,
        protocol_error: ProtocolErrorHandler,
        close: Callable[[Session, int], None],
        refresh_counts: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.sessions = sessions
        self.subscriptions = subscriptions
        self.router = router
        self.rules = rules
        self.security = security
        self._protocol_error = protocol_error
        self._close = close
        self._refresh_counts = refresh_counts

    def cap(self, client_id: str, max_qos: int) -> None:
        """Downgrade a resumed session's subscriptions granted under a higher ceiling.

        The session may have subscribed through another listener (or before the user's
        ``max_qos`` was set); messages already in flight or queued keep their QoS.
        """
        if max_qos >= 2:
            return
        for entry in self.subscriptions.subscriptions_of(client_id):
            if entry.subscription.qos > max_qos:
                capped = replace(entry.subscription, qos=max_qos)
                self.subscriptions.add(replace(entry, subscription=capped))
                self._journal_subscription(client_id, capped, entry.identifier)

    def on_subscribe(self, session: Session, packet: Subscribe, now: float) -> None:
        identifiers = packet.properties.subscription_identifiers
        identifier = identifiers[0] if identifiers else None
        if identifier is not None and not self.settings.subscription_identifier_available:
            self._protocol_error(
                session,
                ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifier sent although not available",
                now,
            )
            return
        for sub in packet.subscriptions:
            if sub.no_local and sub.topic_filter.startswith(SHARE_PREFIX):
                self._protocol_error(  # §3.8.3.1
                    session, ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription", now
                )
                return
        codes: list[int] = []
        retained: list[tuple[str, int]] = []
        for sub in packet.subscriptions:
            code, send_retained = self._subscribe_one(session, sub, identifier, now)
            codes.append(code)
            if send_retained:
                retained.append((sub.topic_filter, code))
        self._refresh_counts()
        suback = Suback(packet.packet_id, tuple(codes))

        def answer(failure: int = 0) -> None:
            if failure:  # the subscriptions are not durable: the client must subscribe again
                if session.open:
                    self._close(session, failure)
                return
            self.router.send(session, suback)
            for topic_filter, qos in retained:
                self.router.send_retained(session, topic_filter, qos, identifier, now)

        journal = durable(session.state)
        if journal is None:
            answer()
        else:  # a durable session's SUBACK promises subscriptions that survive a crash
            journal.after_commit(answer)

    def _subscribe_one(
        self, session: Session, sub: Subscription, identifier: int | None, now: float
    ) -> tuple[int, bool]:
        """SUBACK code for one filter, and whether its retained messages are due."""
        v5 = session.protocol_version >= _V5
        try:
            validate_topic_filter(sub.topic_filter)
        except ProtocolError as exc:
            return (exc.reason if v5 else _SUBACK_FAILURE_V311), False
        share, topic_filter = parse_shared(sub.topic_filter)
        refusal = self._subscription_limit(session, sub.topic_filter, now)
        if refusal is None:
            refusal = self._subscription_refusal(session, share, topic_filter)
            if refusal == ReasonCode.NOT_AUTHORIZED:
                self.security.hit(
                    Defence.ACL_DENIED,
                    session.identity,
                    now,
                    reason=refusal,
                    detail="subscription not allowed by the ACL",
                    topic=sub.topic_filter,
                )
        if refusal is not None:
            log.debug("subscribe.refused", client_id=session.client_id, reason=refusal)
            return (refusal if v5 else _SUBACK_FAILURE_V311), False
        granted = min(sub.qos, session.max_qos)
        entry = SubscriptionEntry(session.client_id, replace(sub, qos=granted), identifier)
        is_new = self.subscriptions.add(entry)
        self._journal_subscription(session.client_id, entry.subscription, identifier)
        handling = sub.retain_handling
        return granted, share is None and (handling == 0 or (handling == 1 and is_new))

    def _journal_subscription(
        self, client_id: str, sub: Subscription, identifier: int | None
    ) -> None:
        state = self.sessions.get(client_id)
        journal = None if state is None else durable(state)
        if journal is not None:
            journal.subscription(subscription_record(client_id, sub, identifier))

    def _journal_unsubscribe(self, client_id: str, topic_filter: str) -> None:
        state = self.sessions.get(client_id)
        journal = None if state is None else durable(state)
        if journal is not None:
            journal.unsubscribed(client_id, topic_filter)

    def _subscription_refusal(
        self, session: Session, share: str | None, topic_filter: str
    ) -> int | None:
        """SUBACK code if the server does not offer this kind of filter or the ACL denies it."""
        settings = self.settings
        if share is not None and not settings.shared_subscription_available:
            return ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        if is_wildcard(topic_filter) and not settings.wildcard_subscription_available:
            return ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
        if not self.policy.may_subscribe(session.identity, topic_filter):
            return ReasonCode.NOT_AUTHORIZED
        return None

    def _subscription_limit(self, session: Session, full_filter: str, now: float) -> int | None:
        """SUBACK code if the filter breaks a bound: too long or deep, or one too many."""
        rejection = self.rules.check_topic_filter(full_filter)
        if rejection is not None:
            reason, defence, text = rejection.reason, Defence.FILTER_LIMIT, rejection.message
        elif (
            self.subscriptions.count_of(session.client_id)
            >= self.settings.max_subscriptions_per_client
            and self.subscriptions.get(session.client_id, full_filter) is None
        ):
            reason, defence, text = (
                ReasonCode.QUOTA_EXCEEDED,
                Defence.SUBSCRIPTION_QUOTA,
                _SUBSCRIPTION_QUOTA,
            )
        else:
            return None
        self.security.hit(
            defence, session.identity, now, reason=reason, detail=text, topic=full_filter
        )
        return reason

    def on_unsubscribe(self, session: Session, packet: Unsubscribe) -> None:
        codes: list[int] = []
        for topic_filter in packet.topic_filters:
            try:
                validate_topic_filter(topic_filter)
            except ProtocolError as exc:
                codes.append(exc.reason)
                continue
            removed = self.subscriptions.remove(session.client_id, topic_filter)
            if removed:
                self._journal_unsubscribe(session.client_id, topic_filter)
            codes.append(ReasonCode.SUCCESS if removed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
        self._refresh_counts()
        v5 = session.protocol_version >= _V5
        self.router.send(session, Unsuback(packet.packet_id, tuple(codes) if v5 else ()))

    def recheck(self, now: float) -> int:
        """After an ACL reload: drop every subscription the policy no longer allows.

        Returns how many were removed. Deliveries are checked per message anyway; this keeps
        the routing table honest and tells the operator what the new rules took away.
        """
        removed = 0
        for state in list(self.sessions):
            for entry in self.subscriptions.subscriptions_of(state.client_id):
                full = entry.subscription.topic_filter
                _share, topic_filter = parse_shared(full)
                if self.policy.may_subscribe(state.identity, topic_filter):
                    continue
                self.subscriptions.remove(state.client_id, full)
                self._journal_unsubscribe(state.client_id, full)
                removed += 1
                log.info("subscription.revoked", client_id=state.client_id, topic_filter=full)
        if removed:
            self._refresh_counts()
        return removed


__all__ = ["SubscriptionRequests"]
