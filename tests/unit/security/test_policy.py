"""Unit tests for the security policy: authentication sources, ACL modes, client-id rules."""

from __future__ import annotations

import argon2
import pytest
from argon2.profiles import CHEAPEST

from bastion.security.acl import AclRules
from bastion.security.passwords import PasswordFile
from bastion.security.policy import ClientIdentity, Policy

ACL_TEXT = """\
# anonymous clients may read public data only
topic read public/#

user sensor1
topic write temp/sensor1

user logger
topic read #

user admin
topic read $SYS/#
"""


def _passwords() -> PasswordFile:
    pw = PasswordFile(argon2.PasswordHasher.from_parameters(CHEAPEST))
    pw.set("sensor1", b"s1-secret")
    pw.set("logger", b"log-secret")
    pw.set("admin", b"admin-secret")
    return pw


def _policy(**kwargs: object) -> Policy:
    return Policy(passwords=_passwords(), acl=AclRules.parse(ACL_TEXT, "acl"), **kwargs)  # type: ignore[arg-type]


def test_anonymous_refused_by_default() -> None:
    result = Policy().authenticate("c", None, None, "127.0.0.1:1")
    assert result.reason_code == 0x87
    assert result.identity is None


def test_anonymous_allowed_when_configured() -> None:
    result = Policy(allow_anonymous=True).authenticate("c", None, None, "127.0.0.1:1")
    assert result.reason_code == 0
    assert result.identity == ClientIdentity("c", None, "127.0.0.1:1")


def test_password_checked() -> None:
    policy = _policy()
    ok = policy.authenticate("s1", "sensor1", b"s1-secret", "p")
    assert ok.reason_code == 0
    assert ok.identity is not None
    assert ok.identity.username == "sensor1"
    assert policy.authenticate("s1", "sensor1", b"wrong", "p").reason_code == 0x86


def test_unknown_user_and_wrong_password_answer_alike() -> None:
    policy = _policy()
    unknown = policy.authenticate("x", "nobody", b"whatever", "p")
    wrong = policy.authenticate("x", "sensor1", b"whatever", "p")
    assert unknown == wrong


def test_password_without_username_refused() -> None:
    assert Policy(allow_anonymous=True).authenticate("c", None, b"pw", "p").reason_code == 0x86


def test_unverifiable_username_is_anonymous_in_dev_mode() -> None:
    policy = Policy(allow_anonymous=True, acl=AclRules.parse(ACL_TEXT, "acl"))
    result = policy.authenticate("c", "logger", b"anything", "p")
    assert result.reason_code == 0
    assert result.identity is not None
    assert result.identity.username is None
    # ... so it does not get the logger's read access.
    assert not policy.may_receive(result.identity, "temp/sensor1")
    assert policy.may_receive(result.identity, "public/news")


def test_username_without_password_store_refused_when_not_anonymous() -> None:
    assert Policy().authenticate("c", "u", b"p", "p").reason_code == 0x86


def test_certificate_identity_used_as_username() -> None:
    policy = _policy(use_certificate_identity=True)
    result = policy.authenticate("s1", None, None, "p", certificate_identity="sensor1")
    assert result.reason_code == 0
    assert result.identity is not None
    assert result.identity.username == "sensor1"
    assert policy.may_publish(result.identity, "temp/sensor1")


def test_certificate_identity_ignored_unless_enabled() -> None:
    result = _policy().authenticate("s1", None, None, "p", certificate_identity="sensor1")
    assert result.reason_code == 0x87


def test_acl_decisions_per_user() -> None:
    policy = _policy()
    sensor = ClientIdentity("s1", "sensor1", "p")
    logger = ClientIdentity("l", "logger", "p")
    admin = ClientIdentity("a", "admin", "p")
    assert policy.may_publish(sensor, "temp/sensor1")
    assert not policy.may_publish(sensor, "temp/sensor2")
    assert not policy.may_subscribe(sensor, "#")
    assert policy.may_subscribe(logger, "#")
    assert not policy.may_publish(logger, "temp/sensor1")
    assert not policy.may_receive(logger, "$SYS/broker/uptime")
    assert policy.may_subscribe(admin, "$SYS/#")
    decision = policy.check(sensor, "temp/sensor1", "write")
    assert decision.rule is not None
    assert "temp/sensor1" in decision.rule


def test_no_acl_is_open_only_in_dev_mode() -> None:
    ident = ClientIdentity("c", None, "p")
    assert Policy(allow_anonymous=True).may_publish(ident, "any/topic")
    assert Policy(allow_anonymous=True).open_access
    closed = Policy(passwords=_passwords())
    assert not closed.open_access
    assert not closed.may_publish(ClientIdentity("s", "sensor1", "p"), "temp/sensor1")


def test_reload_swaps_rules() -> None:
    policy = _policy()
    sensor = ClientIdentity("s1", "sensor1", "p")
    assert policy.may_publish(sensor, "temp/sensor1")
    policy.reload(passwords=_passwords(), acl=AclRules.parse("user sensor1\ntopic read x\n"))
    assert not policy.may_publish(sensor, "temp/sensor1")


@pytest.mark.parametrize(
    ("client_id", "accepted"),
    [("sensor1", True), ("sensor1-a", True), ("sensor2", False), ("xsensor1", False)],
)
def test_client_id_patterns(client_id: str, accepted: bool) -> None:
    policy = _policy(client_id_patterns=("%u", "%u-*"))
    result = policy.authenticate(client_id, "sensor1", b"s1-secret", "p")
    assert (result.reason_code == 0) is accepted
    if not accepted:
        assert result.reason_code == 0x85


def test_client_id_pattern_escapes_glob_characters_in_username() -> None:
    pw = PasswordFile(argon2.PasswordHasher.from_parameters(CHEAPEST))
    pw.set("a*", b"pw")
    policy = Policy(passwords=pw, client_id_patterns=("%u",))
    assert policy.authenticate("a*", "a*", b"pw", "p").reason_code == 0
    assert policy.authenticate("abc", "a*", b"pw", "p").reason_code == 0x85


def test_max_qos_per_verified_user_only() -> None:
    policy = Policy(allow_anonymous=True, user_max_qos={"meter": 0, "gateway": 1})
    assert policy.max_qos_for("meter") == 0
    assert policy.max_qos_for("gateway") == 1
    assert policy.max_qos_for("other") is None
    assert policy.max_qos_for(None) is None  # anonymous: listener and server ceilings only
