"""Unit tests for ``bastion.security.acl``: Mosquitto ``acl_file`` syntax, decisions, TOML form.

The reference deployment of ARCHITECTURE.md is the main fixture: sensors write their own
topic, the alert service reads ``motion/#``, the logger reads ``#``, only the admin ``$SYS``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.security.acl import Access, AclDecision, AclRule, AclRules, acl_from_toml

REFERENCE = """\
# Anonymous clients (no username) may only read the public tree.
topic read public/#

user sensor1
topic write temp/sensor1

user alerts
topic read motion/#

user logger
topic read #

user admin
topic readwrite $SYS/#
topic #

# Every authenticated client owns devices/<username>/ and its own inbox.
pattern readwrite devices/%u/#
pattern read inbox/%c
pattern deny devices/%u/firmware
"""


@pytest.fixture
def acl() -> AclRules:
    return AclRules.parse(REFERENCE, source="acl.conf")


OPS: dict[str, Access] = {"read": "read", "write": "write", "subscribe": "subscribe"}


def allowed(rules: AclRules, user: str | None, topic: str, op: str, client: str = "c1") -> bool:
    return rules.check(user, client, topic, OPS[op]).allowed


# --- the reference deployment ---------------------------------------------------------------


def test_rule_descriptions_name_file_line_and_rule(acl: AclRules) -> None:
    assert acl.check("sensor1", "s1", "temp/sensor1", "write") == AclDecision(
        True, "acl.conf:5: user sensor1: topic write temp/sensor1"
    )
    assert acl.check(None, "anon", "public/news", "read") == AclDecision(
        True, "acl.conf:2: anonymous: topic read public/#"
    )
    assert acl.check("admin", "a", "x/y", "write") == AclDecision(
        True, "acl.conf:15: user admin: topic readwrite #"
    )
    assert acl.check("sensor1", "s1", "devices/sensor1/led", "write") == AclDecision(
        True, "acl.conf:18: pattern readwrite devices/%u/# (as devices/sensor1/#)"
    )


def test_deny_by_default_says_no_rule(acl: AclRules) -> None:
    assert acl.check("sensor1", "s1", "temp/sensor2", "write") == AclDecision(False, None)
    assert acl.check("sensor1", "s1", "temp/sensor1", "read") == AclDecision(False, None)
    assert acl.check("stranger", "x", "public/news", "read") == AclDecision(False, None)
    assert AclRules().check("admin", "a", "anything", "read") == AclDecision(False, None)


def test_each_service_does_exactly_its_job(acl: AclRules) -> None:
    assert allowed(acl, "alerts", "motion/sensor3", "read")
    assert not allowed(acl, "alerts", "motion/sensor3", "write")
    assert not allowed(acl, "alerts", "temp/sensor1", "read")
    assert allowed(acl, "logger", "temp/sensor1", "read")
    assert not allowed(acl, "logger", "temp/sensor1", "write")


def test_anonymous_block_applies_to_anonymous_clients_only(acl: AclRules) -> None:
    assert allowed(acl, None, "public/news", "read")
    assert not allowed(acl, None, "public/news", "write")
    # Authenticated users do not inherit the lines before the first `user`.
    assert not allowed(acl, "sensor1", "public/news", "read")
    assert not allowed(acl, "", "public/news", "read")  # an empty username is still a username


def test_user_without_block_gets_only_patterns(acl: AclRules) -> None:
    assert allowed(acl, "stranger", "devices/stranger/state", "write")
    assert allowed(acl, "stranger", "inbox/c9", "read", client="c9")
    assert not allowed(acl, "stranger", "inbox/c9", "read", client="c8")
    assert not allowed(acl, "stranger", "devices/sensor1/state", "write")


def test_patterns_with_u_skip_anonymous_but_c_applies(acl: AclRules) -> None:
    assert not allowed(acl, None, "devices//x", "write")
    assert allowed(acl, None, "inbox/anon-7", "read", client="anon-7")


def test_deny_pattern_wins_over_grants(acl: AclRules) -> None:
    decision = acl.check("sensor1", "s1", "devices/sensor1/firmware", "write")
    assert decision == AclDecision(
        False, "acl.conf:20: pattern deny devices/%u/firmware (as devices/sensor1/firmware)"
    )
    # ... even over a user's own topic grant (Mosquitto would let the `topic #` line win).
    assert not allowed(acl, "admin", "devices/admin/firmware", "write", client="a")


def test_sys_is_only_granted_by_explicit_dollar_rules(acl: AclRules) -> None:
    assert not allowed(acl, "logger", "$SYS/broker/uptime", "read")  # `#` does not cover $SYS
    assert allowed(acl, "admin", "$SYS/broker/uptime", "read")
    rules = AclRules.parse("user u\ntopic read +/broker/#\ntopic read +\n")
    assert not allowed(rules, "u", "$SYS/broker/uptime", "read")
    assert not allowed(rules, "u", "$SYS", "read")
    assert allowed(rules, "u", "x/broker/uptime", "read")


# --- syntax -----------------------------------------------------------------------------------


def test_access_words_and_default_readwrite() -> None:
    rules = AclRules.parse("user u\ntopic a\ntopic read r\ntopic write w\ntopic readwrite rw\n")
    assert [r.access for r in rules.rules] == ["readwrite", "read", "write", "readwrite"]
    assert allowed(rules, "u", "a", "read") and allowed(rules, "u", "a", "write")
    assert allowed(rules, "u", "r", "read") and not allowed(rules, "u", "r", "write")
    assert allowed(rules, "u", "w", "write") and not allowed(rules, "u", "w", "read")


def test_deny_precedes_grants_whatever_the_order() -> None:
    rules = AclRules.parse(
        "user u\ntopic readwrite home/#\ntopic deny home/alarm/#\ntopic readwrite home/alarm/x\n",
        source="f",
    )
    assert rules.check("u", "c", "home/alarm/x", "write") == AclDecision(
        False, "f:3: user u: topic deny home/alarm/#"
    )
    assert not allowed(rules, "u", "home/alarm/x", "read")
    assert allowed(rules, "u", "home/kitchen", "write")


def test_topics_may_contain_spaces_after_the_access_word() -> None:
    rules = AclRules.parse("user u\ntopic read   Accounts payable/2026  \n")
    assert rules.rules[0].topic == "Accounts payable/2026"
    assert allowed(rules, "u", "Accounts payable/2026", "read")


def test_user_names_may_contain_spaces_and_blocks_add_up() -> None:
    rules = AclRules.parse(
        "user alert service\ntopic read a\nuser x\ntopic b\nuser alert service\ntopic read c\n"
    )
    assert allowed(rules, "alert service", "a", "read")
    assert allowed(rules, "alert service", "c", "read")
    assert not allowed(rules, "alert service", "b", "read")


def test_pattern_lines_are_global_wherever_they_appear() -> None:
    rules = AclRules.parse("user admin\npattern read users/%u\n")
    assert rules.rules[0] == AclRule("<acl>:2", "pattern", None, "read", "users/%u")
    assert allowed(rules, "bob", "users/bob", "read")


def test_comments_blank_lines_whitespace_tabs_crlf() -> None:
    text = (
        "# comment\r\n"
        "\r\n"
        "   # indented comment\n"
        "user\tu\r\n"
        "\ttopic\tread\tsensors/#   \r\n"
        "pattern  write  out/%c-%u/x\n"
    )
    rules = AclRules.parse(text)
    assert [(r.source, r.topic) for r in rules.rules] == [
        ("<acl>:5", "sensors/#"),
        ("<acl>:6", "out/%c-%u/x"),
    ]
    assert allowed(rules, "u", "sensors/t", "read")
    assert allowed(rules, "u", "out/c1-u/x", "write")


def test_percent_other_than_u_and_c_is_literal() -> None:
    rules = AclRules.parse("pattern read a/%x%%u/%c\n")
    assert allowed(rules, "bob", "a/%x%bob/c1", "read")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("topic", "'topic' needs a topic"),
        ("pattern   ", "'pattern' needs a topic"),
        ("topic read", "'topic read' has an access word but no topic"),
        ("pattern deny", "'pattern deny' has an access word but no topic"),
        ("topic rw a/b", "unknown access 'rw'"),
        ("topic Accounts payable", "unknown access 'Accounts'"),
        ("user", "'user' needs a username"),
        ("users bob", "unknown keyword 'users'"),
        ("Topic read a", "unknown keyword 'Topic'"),
        ("topic read a/#/b", "invalid topic filter 'a/#/b'"),
        ("topic read a+", "invalid topic filter 'a+'"),
        ("topic read $share/g/a", "starts with '$share/'"),
        ("pattern read x/%u+", "invalid topic filter 'x/%u+'"),
    ],
)
def test_syntax_errors_name_file_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "acl.conf"
    path.write_text(f"# acl\nuser ok\ntopic read fine\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        AclRules.load(path)
    assert str(info.value).startswith(f"{path}:4: ")
    assert problem in str(info.value)


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read ACL file"):
        AclRules.load(tmp_path / "missing.conf")
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"topic read \xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        AclRules.load(bad)


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "acl.conf"
    path.write_text(REFERENCE, encoding="utf-8")
    rules = AclRules.load(path)
    assert rules.check("sensor1", "s", "temp/sensor1", "write").rule == (
        f"{path}:5: user sensor1: topic write temp/sensor1"
    )


# --- subscribe: filter coverage ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "subscription", "expected"),
    [
        ("temp/#", "temp/#", True),
        ("temp/#", "temp/+", True),
        ("temp/#", "temp/sensor1/#", True),
        ("temp/#", "temp", True),  # '#' includes the parent level
        ("temp/#", "#", False),
        ("temp/#", "+/sensor1", False),
        ("temp/sensor1", "temp/sensor1", True),
        ("temp/sensor1", "temp/#", False),
        ("temp/sensor1", "temp/+", False),
        ("+/sensor1", "temp/sensor1", True),
        ("+/sensor1", "+/sensor1", True),
        ("+/sensor1", "#", False),
        ("+/sensor1", "+/+", False),
        ("+/+", "temp/+", True),
        ("+/+", "temp/#", False),  # temp/#  also matches temp and temp/a/b
        ("+/#", "temp", True),
        ("#", "#", True),
        ("#", "+/+/#", True),
        ("#", "$SYS/#", False),  # the $ rule: '#' never matches $SYS topics
        ("+/#", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker/+", True),
        ("$SYS/#", "#", False),
        ("$SYS/broker/+", "$SYS/broker/#", False),
        ("a/+/c", "a/+/c", True),
        ("a/+/c", "a/b/+", False),
        ("a//c", "a/+/c", False),
        ("a/+/c", "a//c", True),
    ],
)
def test_subscribe_needs_one_read_rule_covering_the_filter(
    rule: str, subscription: str, expected: bool
) -> None:
    rules = AclRules.parse(f"user u\ntopic read {rule}\n")
    assert allowed(rules, "u", subscription, "subscribe") is expected


def test_subscribe_needs_read_not_write() -> None:
    rules = AclRules.parse("user u\ntopic write temp/#\n")
    assert not allowed(rules, "u", "temp/+", "subscribe")


def test_subscribe_refused_when_a_deny_overlaps() -> None:
    rules = AclRules.parse("user u\ntopic read #\ntopic deny secret/#\n", source="f")
    assert rules.check("u", "c", "#", "subscribe") == AclDecision(
        False, "f:3: user u: topic deny secret/#"
    )
    assert not allowed(rules, "u", "+/x", "subscribe")  # secret/x is under it
    assert not allowed(rules, "u", "secret", "subscribe")  # deny secret/# covers its parent
    assert allowed(rules, "u", "public/#", "subscribe")
    assert allowed(rules, "u", "secretive/#", "subscribe")


def test_deny_on_sys_does_not_block_ordinary_subscriptions() -> None:
    rules = AclRules.parse("user u\ntopic read #\ntopic deny $SYS/#\n")
    assert allowed(rules, "u", "#", "subscribe")


def test_subscribe_and_read_agree_for_plain_topics(acl: AclRules) -> None:
    for topic in ("temp/sensor1", "motion/x", "public/a", "$SYS/broker/uptime", "devices/alerts/f"):
        for user in (None, "alerts", "logger", "admin", "sensor1"):
            assert allowed(acl, user, topic, "subscribe") == allowed(acl, user, topic, "read")


def test_shared_subscriptions_are_checked_on_the_inner_filter() -> None:
    rules = AclRules.parse("user u\ntopic read jobs/#\n")
    assert allowed(rules, "u", "$share/workers/jobs/+", "subscribe")
    assert not allowed(rules, "u", "$share/workers/#", "subscribe")


def test_invalid_subjects_are_denied_without_a_rule() -> None:
    rules = AclRules.parse("user u\ntopic #\n")
    for subject, op in [
        ("a/+", "read"),
        ("a/#", "write"),
        ("", "read"),
        ("a/#/b", "subscribe"),
        ("", "subscribe"),
        ("$share/g", "subscribe"),
    ]:
        assert rules.check("u", "c", subject, OPS[op]) == AclDecision(False, None)


# --- substitution cannot be abused ---------------------------------------------------------

INJECTION = """\
user sensor1
topic read config/sensor1
pattern readwrite devices/%u/#
pattern read %c/#
pattern deny devices/%u/firmware
pattern deny vault/%c
topic read vault/#
"""


@pytest.mark.parametrize("username", ["+", "#", "sensor1/x", "a+b", "", "x#"])
def test_username_with_wildcards_or_slash_gets_no_pattern_grant(username: str) -> None:
    rules = AclRules.parse(INJECTION)
    for topic in ("devices/sensor1/state", "devices/x/state", "devices/", "devices/a+b/x"):
        assert not allowed(rules, username, topic, "write")
    assert not allowed(rules, username, "devices/#", "subscribe")
    assert not allowed(rules, username, "devices/+/state", "subscribe")


@pytest.mark.parametrize("client_id", ["+", "#", "sensor1/x", "$SYS", "$share", ""])
def test_client_id_cannot_widen_a_pattern(client_id: str) -> None:
    rules = AclRules.parse(INJECTION)
    for topic in ("$SYS/broker/uptime", "sensor1/x/y", "anything", "$share/x"):
        assert not allowed(rules, "bob", topic, "read", client=client_id)
    assert not allowed(rules, "bob", "#", "subscribe", client=client_id)
    assert not allowed(rules, "bob", "$SYS/#", "subscribe", client=client_id)


def test_safe_identities_still_get_their_patterns() -> None:
    rules = AclRules.parse(INJECTION)
    assert allowed(rules, "bob", "devices/bob/state", "write", client="bob-1")
    assert allowed(rules, "bob", "bob-1/inbox", "read", client="bob-1")
    assert allowed(rules, "bob", "bob-1/#", "subscribe", client="bob-1")
    assert not allowed(rules, "bob", "devices/bob/firmware", "write", client="bob-1")


def test_deny_patterns_still_deny_with_unsafe_identities() -> None:
    rules = AclRules.parse(
        "user a/b\ntopic readwrite devices/#\npattern deny devices/%u/firmware\n"
    )
    decision = rules.check("a/b", "c", "devices/a/b/firmware", "write")
    assert decision == AclDecision(
        False, "<acl>:3: pattern deny devices/%u/firmware (as devices/a/b/firmware)"
    )
    assert allowed(rules, "a/b", "devices/a/other", "write")
    # A wildcard identity widens a deny (safe direction), never a grant.
    rules = AclRules.parse("user +\ntopic readwrite devices/#\npattern deny devices/%u/firmware\n")
    assert not allowed(rules, "+", "devices/anyone/firmware", "write")
    assert not allowed(rules, "+", "devices/#", "subscribe")


def test_pattern_starting_with_dollar_may_use_placeholders() -> None:
    rules = AclRules.parse("pattern write $SYS/broker/connection/%c/state\n")
    assert allowed(rules, "bridge", "$SYS/broker/connection/b1/state", "write", client="b1")
    assert not allowed(rules, "bridge", "$SYS/broker/connection/b2/state", "write", client="b1")


# --- the per-client view ---------------------------------------------------------------------


def test_bound_view_gives_the_same_answers(acl: AclRules) -> None:
    view = acl.bind("sensor1", "s1")
    for topic, op in [
        ("temp/sensor1", "write"),
        ("devices/sensor1/firmware", "write"),
        ("devices/sensor1/#", "subscribe"),
        ("inbox/s1", "read"),
    ]:
        assert view.check(topic, OPS[op]) == acl.check("sensor1", "s1", topic, OPS[op])


# --- the TOML form ---------------------------------------------------------------------------

REFERENCE_TOML = """
[[acl.rules]]
anonymous = true
access = "read"
topic = "public/#"

[[acl.rules]]
user = "sensor1"
access = "write"
topic = "temp/sensor1"

[[acl.rules]]
user = "alerts"
access = "read"
topic = "motion/#"

[[acl.rules]]
user = "logger"
access = "read"
topic = "#"

[[acl.rules]]
user = "admin"
access = "readwrite"
topic = "$SYS/#"

[[acl.rules]]
user = "admin"
access = "readwrite"
topic = "#"

[[acl.rules]]
pattern = true
access = "readwrite"
topic = "devices/%u/#"

[[acl.rules]]
pattern = true
access = "read"
topic = "inbox/%c"

[[acl.rules]]
pattern = true
access = "deny"
topic = "devices/%u/firmware"
"""


def test_toml_form_is_equivalent_to_the_file_form(acl: AclRules) -> None:
    from_toml = acl_from_toml(tomllib.loads(REFERENCE_TOML)["acl"])
    assert [(r.kind, r.owner, r.access, r.topic) for r in from_toml.rules] == [
        (r.kind, r.owner, r.access, r.topic) for r in acl.rules
    ]
    assert from_toml.check("sensor1", "s1", "temp/sensor1", "write") == AclDecision(
        True, "acl.rules[1]: user sensor1: topic write temp/sensor1"
    )
    for user in (None, "sensor1", "alerts", "logger", "admin", "bob"):
        for topic in ("temp/sensor1", "motion/a", "$SYS/x", "devices/bob/firmware", "inbox/c1"):
            for op in ("read", "write", "subscribe"):
                assert allowed(from_toml, user, topic, op) == allowed(acl, user, topic, op)


def test_toml_empty_rules_deny_everything() -> None:
    assert not allowed(acl_from_toml({}), "u", "a", "read")
    assert not allowed(acl_from_toml({"rules": []}), "u", "a", "read")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"rule": []}, "acl: unknown key 'rule'"),
        ({"rules": {"user": "u"}}, "acl.rules: expected an array of tables"),
        ({"rules": ["user u"]}, "acl.rules[0]: expected a table, got str"),
        (
            {"rules": [{"user": "u", "access": "read", "topic": "a", "acess": "x"}]},
            "acl.rules[0]: unknown key 'acess'",
        ),
        (
            {"rules": [{"user": 7, "access": "read", "topic": "a"}]},
            "acl.rules[0].user: expected a string, got int",
        ),
        (
            {"rules": [{"user": "", "access": "read", "topic": "a"}]},
            "acl.rules[0].user: must not be empty",
        ),
        (
            {"rules": [{"pattern": "yes", "access": "read", "topic": "a"}]},
            "acl.rules[0].pattern: expected true or false, got str",
        ),
        (
            {"rules": [{"anonymous": 1, "access": "read", "topic": "a"}]},
            "acl.rules[0].anonymous: expected true or false, got int",
        ),
        ({"rules": [{"access": "read", "topic": "a"}]}, "acl.rules[0]: needs exactly one of"),
        (
            {"rules": [{"user": "u", "pattern": True, "access": "read", "topic": "a"}]},
            "acl.rules[0]: needs exactly one of",
        ),
        (
            {"rules": [{"anonymous": False, "access": "read", "topic": "a"}]},
            "acl.rules[0]: needs exactly one of",
        ),
        (
            {"rules": [{"user": "u", "topic": "a"}]},
            "acl.rules[0].access: expected a string, got nothing",
        ),
        (
            {"rules": [{"user": "u", "access": "rw", "topic": "a"}]},
            "acl.rules[0].access: expected one of read, write, readwrite, deny, got 'rw'",
        ),
        ({"rules": [{"user": "u", "access": "read"}]}, "acl.rules[0].topic: expected a string"),
        (
            {"rules": [{"user": "u", "access": "read", "topic": ["a"]}]},
            "acl.rules[0].topic: expected a string, got list",
        ),
        (
            {"rules": [{"user": "u", "access": "read", "topic": "a/#/b"}]},
            "acl.rules[0].topic: invalid topic filter 'a/#/b'",
        ),
    ],
)
def test_toml_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        acl_from_toml(table)
    assert str(info.value).startswith(message)


def test_toml_error_index_points_at_the_bad_rule() -> None:
    table = tomllib.loads(REFERENCE_TOML)["acl"]
    table["rules"][4]["access"] = "all"
    with pytest.raises(ConfigError, match=r"^acl\.rules\[4\]\.access: "):
        acl_from_toml(table)


def test_bound_view_remembers_decisions_and_stays_right(acl: AclRules) -> None:
    """The per-client decision cache answers like a fresh check, also once it overflows."""
    bound = acl.bind("sensor1", "s1")
    fresh = acl.bind("sensor1", "s1")
    topics = ["temp/sensor1", "temp/sensor2", "devices/sensor1/x", "devices/sensor1/firmware"]
    topics += [f"noise/{i}" for i in range(2500)]  # more than the cache keeps
    for _ in range(2):
        for topic in topics:
            for access in ("read", "write"):
                assert bound.check(topic, access) == fresh.check(topic, access)
    assert bound.check("temp/sensor1", "write").allowed
    assert not bound.check("devices/sensor1/firmware", "write").allowed
    assert bound.check("devices/sensor1/x", "read").allowed
