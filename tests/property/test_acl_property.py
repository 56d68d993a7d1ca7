"""Property tests for ``bastion.security.acl``: soundness of subscribe checks, exact filter algebra.

Rules, identities and topics come from small alphabets (with empty, ``$SYS`` and hostile
levels) so they collide often; decisions are compared with a naive string-based reference.
"""

from __future__ import annotations

import itertools
from typing import get_args

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from bastion.mqtt.topics import parse_shared, topic_matches
from bastion.security.acl import Access, AclRule, AclRules, RuleAccess

ACL = settings(max_examples=300, deadline=None)

LITERALS = ["a", "b", "", "$SYS"]
TOPIC_LEVELS = [*LITERALS, "u1", "c1", "z"]
USERS: list[str | None] = [None, "u1", "u2", "+", "#", "a/b", "", "$SYS"]
CLIENTS = ["c1", "c2", "+", "#", "a/b", "$SYS", ""]
OWNERS: list[str | None] = [None, "u1", "u1", "u2", "+", "a/b"]
RULE_ACCESS: tuple[RuleAccess, ...] = get_args(RuleAccess)
TOPIC_OPS: tuple[Access, ...] = ("read", "write")
GRANTS: dict[str, set[RuleAccess]] = {
    "read": {"read", "readwrite"},
    "write": {"write", "readwrite"},
}


def filters_of_size(levels: list[str], size: int) -> list[str]:
    """Every valid filter of ``size`` levels from ``levels`` and '+', with and without '/#'."""
    out: list[str] = []
    for combo in itertools.product([*levels, "+"], repeat=size):
        text = "/".join(combo)
        if text:
            out.append(text)
        out.append(f"{text}/#")
    return out


def filters(levels: list[str], max_levels: int = 4) -> st.SearchStrategy[str]:
    """Valid filters, every length equally likely (precomputed: far faster than building)."""
    by_size = [st.sampled_from(filters_of_size(levels, n)) for n in range(1, max_levels + 1)]
    return st.one_of(st.just("#"), *by_size)


RULE_FILTERS = filters(LITERALS)
PATTERN_FILTERS = filters([*LITERALS, "%u", "%c", "x%u", "%c-%u"], max_levels=3)


@st.composite
def rules(draw: st.DrawFn) -> AclRule:
    index = draw(st.integers(0, 99))
    access = draw(st.sampled_from(RULE_ACCESS))
    if draw(st.booleans()):
        return AclRule(f"r{index}", "pattern", None, access, draw(PATTERN_FILTERS))
    owner = draw(st.sampled_from(OWNERS))
    return AclRule(f"r{index}", "topic", owner, access, draw(RULE_FILTERS))


rule_sets = st.lists(rules(), max_size=8)
topic_names = (
    st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join).filter(bool)
)


@st.composite
def topic_in(draw: st.DrawFn, topic_filter: str) -> str:
    """A topic name that ``topic_filter`` matches (wildcards filled from ``TOPIC_LEVELS``)."""
    _, inner = parse_shared(topic_filter)
    out: list[str] = []
    for level in inner.split("/"):
        if level == "+":
            out.append(draw(st.sampled_from(TOPIC_LEVELS)))
        elif level == "#":
            out.extend(draw(st.lists(st.sampled_from(TOPIC_LEVELS), max_size=3)))
        else:
            out.append(level)
    topic = "/".join(out)
    assume(topic and topic_matches(topic_filter, topic))
    return topic


@st.composite
def narrowed(draw: st.DrawFn, grants: list[str]) -> str:
    """A subscription likely to be granted: a granted filter with wildcards partly filled in."""
    if not grants:
        return draw(RULE_FILTERS)
    out: list[str] = []
    for level in draw(st.sampled_from(grants)).split("/"):
        if level == "+" and draw(st.booleans()):
            out.append(draw(st.sampled_from(LITERALS)))
        elif level == "#" and draw(st.booleans()):
            out.extend(draw(st.lists(st.sampled_from([*LITERALS, "+"]), max_size=2)))
            if draw(st.booleans()):
                out.append("#")
        else:
            out.append(level)
    return "/".join(out) or "#"


def _unsafe(value: str) -> bool:
    return value == "" or any(ch in value for ch in "+#/")


def naive_rules(
    rule_set: list[AclRule], user: str | None, client: str
) -> list[tuple[RuleAccess, str]]:
    """The (access, filter) pairs that apply to a client, substituted by string replacement."""
    applicable: list[tuple[RuleAccess, str]] = []
    for rule in rule_set:
        if rule.kind == "topic":
            if rule.owner == user:
                applicable.append((rule.access, rule.topic))
            continue
        if "%u" in rule.topic and user is None:
            continue
        filled = rule.topic.replace("%u", user or "").replace("%c", client)
        if rule.access != "deny":
            used = [v for v, key in ((user or "", "%u"), (client, "%c")) if key in rule.topic]
            if any(_unsafe(v) for v in used):
                continue
            if filled.startswith("$") and not rule.topic.startswith("$"):
                continue
        applicable.append((rule.access, filled))
    return applicable


def naive_allowed(
    rule_set: list[AclRule], user: str | None, client: str, topic: str, op: Access
) -> bool:
    """Reference decision: deny if a deny matches, else allow if a grant matches."""
    assert op != "subscribe"
    applicable = naive_rules(rule_set, user, client)
    if any(access == "deny" and topic_matches(f, topic) for access, f in applicable):
        return False
    return any(access in GRANTS[op] and topic_matches(f, topic) for access, f in applicable)


@ACL
@given(
    rule_sets,
    st.sampled_from(USERS),
    st.sampled_from(CLIENTS),
    st.lists(topic_names, min_size=1, max_size=6),
)
def test_read_and_write_agree_with_the_naive_reference(
    rule_set: list[AclRule], user: str | None, client: str, topics: list[str]
) -> None:
    acl = AclRules(rule_set)
    view = acl.bind(user, client)
    for topic in topics:
        for op in TOPIC_OPS:
            expected = naive_allowed(rule_set, user, client, topic, op)
            decision = view.check(topic, op)
            assert decision.allowed is expected, (topic, op, decision)
            if decision.allowed:
                assert decision.rule is not None


@ACL
@given(st.data(), rule_sets, st.sampled_from(USERS), st.sampled_from(CLIENTS))
def test_an_allowed_subscription_only_carries_readable_topics(
    data: st.DataObject, rule_set: list[AclRule], user: str | None, client: str
) -> None:
    """Soundness: if subscribing to F is allowed, every topic F matches is readable."""
    grants = [f for access, f in naive_rules(rule_set, user, client) if access != "deny"]
    topic_filter = data.draw(
        st.one_of(narrowed(grants), filters(TOPIC_LEVELS, max_levels=3)), label="filter"
    )
    if data.draw(st.booleans(), label="shared"):
        topic_filter = f"$share/g/{topic_filter}"
    view = AclRules(rule_set).bind(user, client)
    if not view.check(topic_filter, "subscribe").allowed:
        event("subscription refused")
        return
    event("subscription allowed")
    for _ in range(5):
        topic = data.draw(topic_in(topic_filter), label="topic")
        assert view.check(topic, "read").allowed, (topic_filter, topic)
        assert naive_allowed(rule_set, user, client, topic, "read"), (topic_filter, topic)


@ACL
@given(rule_sets, st.sampled_from(USERS), st.sampled_from(CLIENTS), topic_names)
def test_subscribing_to_a_topic_name_is_reading_it(
    rule_set: list[AclRule], user: str | None, client: str, topic: str
) -> None:
    view = AclRules(rule_set).bind(user, client)
    assert view.check(topic, "subscribe").allowed == view.check(topic, "read").allowed


# --- the filter algebra is exact: brute force over a finite universe of topics -------------

ALGEBRA_LEVELS = ["a", "", "$SYS"]
# Every topic of up to 4 levels over the filters' literals plus one fresh level "z": enough
# to witness any non-coverage or any overlap of filters with at most 3 levels.
UNIVERSE = [
    "/".join(levels)
    for size in range(1, 5)
    for levels in itertools.product([*ALGEBRA_LEVELS, "z"], repeat=size)
    if "/".join(levels)
]
small_filters = filters(ALGEBRA_LEVELS, max_levels=3)


@ACL
@given(small_filters, small_filters)
def test_one_read_grant_covers_exactly_the_filters_it_contains(
    granted: str, subscription: str
) -> None:
    acl = AclRules([AclRule("r", "topic", "u", "read", granted)])
    contained = all(
        topic_matches(granted, topic) for topic in UNIVERSE if topic_matches(subscription, topic)
    )
    assert acl.check("u", "c", subscription, "subscribe").allowed is contained


@ACL
@given(small_filters, small_filters)
def test_a_deny_refuses_exactly_the_filters_it_overlaps(denied: str, subscription: str) -> None:
    acl = AclRules(
        [
            AclRule("g1", "topic", "u", "read", "#"),
            AclRule("g2", "topic", "u", "read", "$SYS/#"),
            AclRule("d", "topic", "u", "deny", denied),
        ]
    )
    overlap = any(
        topic_matches(denied, topic) and topic_matches(subscription, topic) for topic in UNIVERSE
    )
    assert acl.check("u", "c", subscription, "subscribe").allowed is not overlap
