"""The demo's least-privilege ACL (``demo/access.py``), decided by the broker's own ``AclRules``.

Every client may do its job and nothing else; anonymous clients get nothing; nobody reads $SYS.
"""

from __future__ import annotations

import pytest

from bastion.demo.access import CLIENTS, SENSORS, acl_text, client_names
from bastion.security.acl import Access, AclRules


@pytest.fixture(scope="module")
def rules() -> AclRules:
    return AclRules.parse(acl_text(), source="demo acl")


ALLOWED: list[tuple[str, Access, str]] = [
    ("sensor1", "write", "temp/sensor1"),
    ("sensor1", "write", "status/sensor1"),
    ("sensor2", "write", "humid/sensor2"),
    ("sensor3", "write", "motion/sensor3"),
    ("door1", "subscribe", "cmd/door1"),
    ("door1", "write", "result/door1"),
    ("door1", "write", "status/door1"),
    ("alerts", "subscribe", "motion/#"),
    ("alerts", "subscribe", "status/+"),
    ("alerts", "subscribe", "temp/#"),
    ("alerts", "write", "alerts/offline/sensor2"),
    ("logger", "subscribe", "#"),
    ("dashboard", "subscribe", "temp/#"),
    ("viewer", "subscribe", "#"),
    ("viewer", "read", "alerts/motion/sensor3"),
    ("operator", "write", "cmd/door1"),
    ("operator", "subscribe", "result/door1"),
]

DENIED: list[tuple[str | None, Access, str]] = [
    ("sensor1", "write", "humid/sensor2"),  # another sensor's topic
    ("sensor1", "write", "status/sensor2"),
    ("sensor1", "subscribe", "#"),
    ("sensor1", "read", "temp/sensor1"),  # devices only write
    ("sensor2", "write", "temp/sensor1"),
    ("door1", "write", "cmd/door1"),  # the lock cannot command itself
    ("alerts", "write", "temp/sensor1"),
    ("alerts", "subscribe", "#"),
    ("logger", "write", "temp/sensor1"),  # the logger never publishes
    ("logger", "write", "alerts/x/y"),
    ("dashboard", "subscribe", "humid/#"),
    ("dashboard", "subscribe", "#"),
    ("viewer", "write", "cmd/door1"),  # read-only
    ("viewer", "write", "temp/sensor1"),
    ("operator", "write", "cmd/door2"),
    ("operator", "subscribe", "#"),
    (None, "subscribe", "#"),  # anonymous: nothing at all
    (None, "write", "temp/sensor1"),
    ("stranger", "write", "temp/sensor1"),
]


@pytest.mark.parametrize(("user", "access", "topic"), ALLOWED)
def test_each_client_may_do_its_job(rules: AclRules, user: str, access: Access, topic: str) -> None:
    decision = rules.check(user, user, topic, access)
    assert decision.allowed, f"{user} {access} {topic}: {decision}"


@pytest.mark.parametrize(("user", "access", "topic"), DENIED)
def test_and_nothing_else(rules: AclRules, user: str | None, access: Access, topic: str) -> None:
    decision = rules.check(user, user or "anon", topic, access)
    assert not decision.allowed, f"{user} {access} {topic}: allowed by {decision.rule}"


@pytest.mark.parametrize("user", client_names())
def test_nobody_reads_sys(rules: AclRules, user: str) -> None:
    assert not rules.check(user, user, "$SYS/broker/uptime", "read").allowed
    assert not rules.check(user, user, "$SYS/#", "subscribe").allowed


def test_every_client_has_a_distinct_name_and_grants() -> None:
    names = client_names()
    assert len(set(names)) == len(names) == len(CLIENTS)
    assert all(client.grants for client in CLIENTS)
    assert {sensor.name for sensor in SENSORS} <= set(names)
