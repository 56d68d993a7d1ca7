"""Access control lists, deny by default: Mosquitto's ``acl_file`` syntax and a TOML form.

Rules are compiled once at load into ``AclRules``; ``security.policy`` binds them to a client
at CONNECT (``AclRules.bind``) and asks ``check`` per operation; topic syntax is ``mqtt.topics``.

Mosquitto ``acl_file`` syntax (``AclRules.load`` / ``AclRules.parse``), one directive a line::

    # comment (a line whose first non-blank character is '#'); blank lines are ignored
    topic [read|write|readwrite|deny] <topic filter>
    user <username>
    pattern [read|write|readwrite|deny] <topic filter with %u and %c>

* ``topic`` lines before the first ``user`` line apply to anonymous clients (no username)
  only; after ``user NAME`` they apply to clients that logged in as NAME (several blocks for
  one user add up). A client with a username but no ``user`` block gets only the patterns.
* ``pattern`` lines apply to every client wherever they appear: ``%u`` is replaced by the
  username (a pattern using ``%u`` never applies to anonymous clients), ``%c`` by the client
  id. Without an access word a rule grants ``readwrite``. The topic is everything after the
  access word (so it may contain spaces, and then needs the access word); it must be a
  valid MQTT topic filter without a ``$share/`` prefix.
* Differences from Mosquitto, all on the safe side: ``topic read`` (an access word with
  no topic) is an error instead of a grant on a topic named "read" (write ``topic readwrite
  read`` for that); an unknown keyword, access word or invalid filter is an error with
  ``file:line``; ``deny`` wins over every grant, including a user's ``topic`` grant against a
  ``pattern deny`` (Mosquitto consults the user's topics before the patterns). Indented
  comments and tabs between words are accepted (Mosquitto splits on spaces only).

TOML form (``acl_from_toml``), for the ``[acl]`` table of Bastion's config, whose only key is
``rules``; each rule has exactly one of ``user = "NAME"``, ``anonymous = true`` or ``pattern =
true``, a required ``access`` (``"read"``, ``"write"``, ``"readwrite"`` or ``"deny"``; no
implicit readwrite) and a ``topic``::

    [[acl.rules]]
    user = "sensor1"
    access = "write"
    topic = "temp/sensor1"

    [[acl.rules]]
    pattern = true
    access = "readwrite"
    topic = "devices/%u/#"

Decisions (``AclRules.check`` / ``ClientAcl.check``), for a client's applicable rules (its user
block or the anonymous block, plus the patterns):

* ``read``/``write`` of a topic name T: denied if any ``deny`` rule matches T; else allowed if
  a grant with that access matches T; else denied by default (``rule`` None). Matching is MQTT
  matching including the ``$`` rule: a rule whose first level is ``+`` or ``#`` never matches
  a topic starting with ``$`` (so only explicit ``$SYS/...`` rules grant ``$SYS``, and a
  ``deny #`` does not take back a ``$SYS/#`` grant; deny ``$SYS/#`` explicitly for that).
* ``subscribe`` to a topic filter F (a ``$share/{group}/`` prefix is stripped first):
  denied if any ``deny`` rule *overlaps* F (some topic matches both); else allowed if one
  ``read`` grant *covers* F (every topic F matches, that grant matches too); else denied.
  So a granted subscription never carries a message its subscriber may not read: rule
  ``temp/#`` allows ``temp/+`` and ``temp/sensor1/#`` but rule ``temp/sensor1`` does not allow
  ``temp/#``, rule ``+/sensor1`` allows ``temp/sensor1`` but not ``#``, and with ``deny
  secret/#`` next to ``read #`` a subscription to ``#`` is refused (subscribe to narrower
  filters). One grant must cover F alone; F covered only by the union of several grants is
  refused. For a filter without wildcards, subscribe and read always agree. (Mosquitto 2.0
  grants every subscription and filters at delivery, which hides misconfiguration.)
* Substitution never widens a grant: a grant pattern does not apply to a client whose
  username or client id (whichever it uses) is empty or contains ``+``, ``#``, ``/`` or
  U+0000, nor when the substituted topic starts with ``$`` but the pattern did not (client
  id ``$SYS`` against ``pattern read %c/#``). A ``deny`` pattern always applies, with the
  values inserted as text and the result split at every ``/``: it denies exactly the topics
  the substituted text names, or more (a value ``+`` or ``#`` becomes a wildcard), never less.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from bastion.errors import ConfigError, ProtocolError
from bastion.mqtt.topics import SHARE_PREFIX, parse_shared, validate_topic_filter

__all__ = [
    "Access",
    "AclDecision",
    "AclRule",
    "AclRules",
    "ClientAcl",
    "RuleAccess",
    "acl_from_toml",
]

Access: TypeAlias = Literal["read", "write", "subscribe"]
"""An operation to check: read/write a topic name, or subscribe to a topic filter."""

RuleAccess: TypeAlias = Literal["read", "write", "readwrite", "deny"]
"""What a rule grants (or, for ``deny``, refuses)."""

_READ = 1
_WRITE = 2
_MASKS: dict[str, int] = {"read": _READ, "write": _WRITE, "readwrite": _READ | _WRITE, "deny": 0}
_NEEDED: dict[str, int] = {"read": _READ, "write": _WRITE, "subscribe": _READ}
_ACCESS_WORDS: tuple[RuleAccess, ...] = ("read", "write", "readwrite", "deny")
_WILDCARDS = ("+", "#")
_UNSAFE_CHARS = frozenset("+#/\x00")


@dataclass(frozen=True, slots=True)
class AclDecision:
    """The answer to one check; ``rule`` describes the rule that decided, None if none did."""

    allowed: bool
    rule: str | None


@dataclass(frozen=True, slots=True)
class AclRule:
    """One rule as written: where, for whom, what access, which topic (filter or pattern).

    ``owner`` is the username of a ``topic`` rule's user block, None for the anonymous block;
    it is always None for a ``pattern`` rule, which applies to every client.
    """

    source: str  # "acl.conf:7" or "acl.rules[3]"
    kind: Literal["topic", "pattern"]
    owner: str | None
    access: RuleAccess
    topic: str

    def describe(self) -> str:
        """Human form, e.g. ``"acl.conf:7: user sensor1: topic write temp/sensor1"``."""
        if self.kind == "pattern":
            return f"{self.source}: pattern {self.access} {self.topic}"
        who = "anonymous" if self.owner is None else f"user {self.owner}"
        return f"{self.source}: {who}: topic {self.access} {self.topic}"


class _Slot(enum.Enum):
    USERNAME = "%u"
    CLIENT_ID = "%c"


_Level: TypeAlias = str | tuple[str | _Slot, ...]
"""A compiled pattern level: literal text, or parts joined after substitution."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: AclRule
    mask: int
    levels: tuple[_Level, ...]
    slots: frozenset[_Slot]
    description: str


@dataclass(frozen=True, slots=True)
class _Bound:
    """A rule ready for one client: substituted, split into levels, described."""

    mask: int
    levels: tuple[str, ...]
    description: str


# -- topic algebra over pre-split levels ---------------------------------------------------


def _dollar_blocked(rule: Sequence[str], first: str) -> bool:
    """The MQTT ``$`` rule: a wildcard first level never matches a ``$`` first level."""
    return rule[0] in _WILDCARDS and first not in _WILDCARDS and first.startswith("$")


def _matches(rule: tuple[str, ...], topic: list[str]) -> bool:
    """Does the rule filter match the topic name?"""
    if _dollar_blocked(rule, topic[0]):
        return False
    for index, level in enumerate(rule):
        if level == "#":
            return True
        if index >= len(topic):
            return False
        if level != "+" and level != topic[index]:
            return False
    return len(rule) == len(topic)


def _covers(rule: tuple[str, ...], subject: list[str]) -> bool:
    """Does the rule filter match every topic name that the subject filter matches?

    Exact, including two corner cases of '#': it also matches its parent level (``a/#``
    matches ``a``), and the empty string is not a topic name (so ``+/#`` covers ``#`` and
    ``/+/#`` covers ``/#``: the parent they would miss is no topic at all).
    """
    if _dollar_blocked(rule, subject[0]):
        return False
    for index, level in enumerate(subject):
        if index >= len(rule):
            return False
        granted = rule[index]
        if granted == "#":
            return True
        if level == "#":
            # Subject topics: the parent (levels before index), then one or more levels more.
            # Only "+/#" in the rule takes the deeper ones; it misses just the parent, which
            # is harmless when the parent is the empty string.
            parent_is_empty = index == 0 or (index == 1 and subject[0] == "")
            return granted == "+" and rule[index + 1 : index + 2] == ("#",) and parent_is_empty
        if granted == "+":
            continue
        if level != granted:  # includes a '+' subject level against a literal rule level
            return False
    # The subject has no '#': its topics have exactly len(subject) levels.
    return len(rule) == len(subject) or (len(rule) == len(subject) + 1 and rule[-1] == "#")


def _overlaps(rule: tuple[str, ...], subject: list[str]) -> bool:
    """Is there a topic name that both filters match?

    Exact for valid filters; for the odd levels a ``deny`` pattern can produce (``a+b``,
    a '#' before the end) it may answer True where no topic exists, which only denies more.
    """
    if _dollar_blocked(rule, subject[0]) or _dollar_blocked(subject, rule[0]):
        return False
    common = min(len(rule), len(subject))
    for index in range(common):
        left, right = rule[index], subject[index]
        if left == "#" or right == "#":
            return True
        if "+" not in (left, right) and left != right:
            return False
    if len(rule) == len(subject):
        return True
    longer = rule if len(rule) > len(subject) else subject
    if longer[common] != "#":
        return False
    # Only the shorter filter's own topics are left ('#' also matches its parent level);
    # with one level whose only common value is "", that is the empty string: no topic.
    return not (common == 1 and {rule[0], subject[0]} in ({""}, {"", "+"}))


# -- compiled rules and the per-client view -------------------------------------------------


_DECISIONS_KEPT = 1024  # per client: remembered read/write decisions (the cache starts over)


class ClientAcl:
    """The rules that apply to one client, substituted and ordered: denies, then grants."""

    __slots__ = ("_decided", "_denies", "_grants")

    def __init__(self, denies: Sequence[_Bound], grants: Sequence[_Bound]) -> None:
        self._denies = tuple(denies)
        self._grants = tuple(grants)
        # (topic, access) -> decision, for the topics this client publishes and receives:
        # the rules never change for a bound view (a reload binds a new one).
        self._decided: dict[tuple[str, Access], AclDecision] | None = None

    def check(self, topic: str, access: Access) -> AclDecision:
        """Decide ``read``/``write`` of a topic name or ``subscribe`` to a topic filter."""
        if access == "subscribe":
            return self._check_subscribe(topic)
        decided = self._decided
        if decided is None:
            decided = self._decided = {}
        else:
            known = decided.get((topic, access))
            if known is not None:
                return known
        decision = self._check_name(topic, access)
        if len(decided) >= _DECISIONS_KEPT:
            decided.clear()
        decided[topic, access] = decision
        return decision

    def _check_name(self, topic: str, access: Access) -> AclDecision:
        needed = _NEEDED[access]
        if not topic or "+" in topic or "#" in topic:
            return AclDecision(False, None)  # not a topic name: nothing can grant it
        levels = topic.split("/")
        for rule in self._denies:
            if _matches(rule.levels, levels):
                return AclDecision(False, rule.description)
        for rule in self._grants:
            if rule.mask & needed and _matches(rule.levels, levels):
                return AclDecision(True, rule.description)
        return AclDecision(False, None)

    def _check_subscribe(self, topic_filter: str) -> AclDecision:
        try:
            validate_topic_filter(topic_filter)
        except ProtocolError:
            return AclDecision(False, None)
        _, inner = parse_shared(topic_filter)
        levels = inner.split("/")
        for rule in self._denies:
            if _overlaps(rule.levels, levels):
                return AclDecision(False, rule.description)
        for rule in self._grants:
            if rule.mask & _READ and _covers(rule.levels, levels):
                return AclDecision(True, rule.description)
        return AclDecision(False, None)


def _safe_value(value: str) -> bool:
    return bool(value) and _UNSAFE_CHARS.isdisjoint(value)


def _fill(compiled: _Compiled, username: str, client_id: str) -> str:
    """The pattern's topic with every ``%u``/``%c`` replaced (no safety checks)."""
    values = {_Slot.USERNAME: username, _Slot.CLIENT_ID: client_id}
    return "/".join(
        level
        if isinstance(level, str)
        else "".join(values[p] if isinstance(p, _Slot) else p for p in level)
        for level in compiled.levels
    )


def _bind_pattern(compiled: _Compiled, username: str | None, client_id: str) -> _Bound | None:
    """Substitute one pattern for a client; None if it does not apply to that client."""
    if _Slot.USERNAME in compiled.slots and username is None:
        return None  # as Mosquitto: a %u pattern never applies to anonymous clients
    filled = _fill(compiled, username or "", client_id)
    if compiled.mask:
        # A grant applies only if every substituted value is safe and no '$' topic appears.
        values = {_Slot.USERNAME: username or "", _Slot.CLIENT_ID: client_id}
        if not all(_safe_value(values[slot]) for slot in compiled.slots):
            return None
        if filled.startswith("$") and not compiled.rule.topic.startswith("$"):
            return None
    # A deny keeps the literal text, re-split at every '/': it then denies exactly the topics
    # named by the substituted text, or more (a value "+" or "#" becomes a wildcard), never less.
    description = compiled.description
    if filled != compiled.rule.topic:
        description = f"{description} (as {filled})"
    return _Bound(compiled.mask, tuple(filled.split("/")), description)


class AclRules:
    """A compiled rule set: the anonymous block, user blocks and patterns (see module doc)."""

    def __init__(self, rules: Sequence[AclRule] = ()) -> None:
        """Compile ``rules``; ``ConfigError`` (naming ``rule.source``) for an unusable topic."""
        for rule in rules:
            try:
                _check_rule_topic(rule.topic)
            except ValueError as exc:
                raise ConfigError(f"{rule.source}: {exc}") from None
        self._rules = tuple(rules)
        self._anonymous: list[_Compiled] = []
        self._users: dict[str, list[_Compiled]] = {}
        self._patterns: list[_Compiled] = []
        for rule in self._rules:
            compiled = _compile(rule)
            if rule.kind == "pattern":
                self._patterns.append(compiled)
            elif rule.owner is None:
                self._anonymous.append(compiled)
            else:
                self._users.setdefault(rule.owner, []).append(compiled)

    @property
    def rules(self) -> tuple[AclRule, ...]:
        """Every rule in source order."""
        return self._rules

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AclRules:
        """Read a Mosquitto ``acl_file``; ``ConfigError`` names ``file:line`` and the problem."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read ACL file {os.fspath(path)}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{os.fspath(path)}: not valid UTF-8") from None
        return cls.parse(text, source=os.fspath(path))

    @classmethod
    def parse(cls, text: str, source: str = "<acl>") -> AclRules:
        """Parse the text of an ``acl_file``; ``source`` names it in rule descriptions."""
        return cls(_parse_acl_text(text, source))

    def bind(self, username: str | None, client_id: str) -> ClientAcl:
        """The view for one client; build it at CONNECT (and after a reload), then reuse it."""
        own = self._anonymous if username is None else self._users.get(username, [])
        denies: list[_Bound] = []
        grants: list[_Bound] = []
        for compiled in own:
            bound = _Bound(compiled.mask, _literal_levels(compiled), compiled.description)
            (grants if compiled.mask else denies).append(bound)
        for compiled in self._patterns:
            maybe = _bind_pattern(compiled, username, client_id)
            if maybe is not None:
                (grants if maybe.mask else denies).append(maybe)
        return ClientAcl(denies, grants)

    def check(
        self, username: str | None, client_id: str, topic: str, access: Access
    ) -> AclDecision:
        """One-off decision (binds, then checks); hot paths should keep a ``bind`` result."""
        return self.bind(username, client_id).check(topic, access)


def _literal_levels(compiled: _Compiled) -> tuple[str, ...]:
    return tuple(level for level in compiled.levels if isinstance(level, str))


def _compile(rule: AclRule) -> _Compiled:
    levels: list[_Level] = []
    slots: set[_Slot] = set()
    for level in rule.topic.split("/"):
        if rule.kind == "pattern" and ("%u" in level or "%c" in level):
            parts = _template_parts(level)
            slots.update(p for p in parts if isinstance(p, _Slot))
            levels.append(parts)
        else:
            levels.append(level)
    return _Compiled(rule, _MASKS[rule.access], tuple(levels), frozenset(slots), rule.describe())


def _template_parts(level: str) -> tuple[str | _Slot, ...]:
    """Split ``"%u-data"`` into ``(USERNAME, "-data")``; any other ``%`` stays literal."""
    parts: list[str | _Slot] = []
    text: list[str] = []
    index = 0
    while index < len(level):
        pair = level[index : index + 2]
        if pair in ("%u", "%c"):
            if text:
                parts.append("".join(text))
                text = []
            parts.append(_Slot(pair))
            index += 2
        else:
            text.append(level[index])
            index += 1
    if text:
        parts.append("".join(text))
    return tuple(parts)


def _check_rule_topic(topic: str) -> None:
    """Raise ``ValueError`` unless ``topic`` is usable as a rule's filter."""
    if topic.startswith(SHARE_PREFIX):
        raise ValueError(
            f"topic {topic!r} starts with {SHARE_PREFIX!r}: write the rule for the filter "
            "after the share name (shared subscriptions are checked against it)"
        )
    try:
        validate_topic_filter(topic)
    except ProtocolError as exc:
        raise ValueError(f"invalid topic filter {topic!r}: {exc.message}") from None


# -- the Mosquitto acl_file parser ----------------------------------------------------------


def _parse_rule_line(keyword: str, rest: str, owner: str | None, where: str) -> AclRule:
    words = rest.split(None, 1)
    if not words:
        raise ConfigError(f"{where}: '{keyword}' needs a topic")
    access: str
    if len(words) == 1:
        (topic,) = words
        if topic in _ACCESS_WORDS:
            raise ConfigError(
                f"{where}: '{keyword} {topic}' has an access word but no topic (for a topic "
                f"named {topic!r} write '{keyword} readwrite {topic}')"
            )
        access = "readwrite"
    else:
        access, topic = words[0], words[1].strip()
        if access not in _ACCESS_WORDS:
            raise ConfigError(
                f"{where}: unknown access {access!r} (expected read, write, readwrite or deny;"
                " a topic containing spaces needs an access word)"
            )
    try:
        _check_rule_topic(topic)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    kind: Literal["topic", "pattern"] = "pattern" if keyword == "pattern" else "topic"
    return AclRule(
        source=where,
        kind=kind,
        owner=owner if kind == "topic" else None,
        access=_as_rule_access(access),
        topic=topic,
    )


def _as_rule_access(word: str) -> RuleAccess:
    for candidate in _ACCESS_WORDS:
        if candidate == word:
            return candidate
    raise ValueError(word)


def _parse_acl_text(text: str, source: str) -> list[AclRule]:
    rules: list[AclRule] = []
    owner: str | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        keyword, *tail = line.split(None, 1)
        rest = tail[0] if tail else ""
        if keyword == "user":
            name = rest.strip()
            if not name:
                raise ConfigError(f"{where}: 'user' needs a username")
            owner = name
        elif keyword in ("topic", "pattern"):
            rules.append(_parse_rule_line(keyword, rest, owner, where))
        else:
            raise ConfigError(
                f"{where}: unknown keyword {keyword!r} (expected topic, pattern or user)"
            )
    return rules


# -- the TOML form ---------------------------------------------------------------------------

_TOML_RULE_KEYS = ("user", "anonymous", "pattern", "access", "topic")


def _toml_string(rule: Mapping[str, object], key: str, where: str) -> str:
    value = rule.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {_type_name(value)}")
    if not value:
        raise ConfigError(f"{where}.{key}: must not be empty")
    return value


def _type_name(value: object) -> str:
    return "nothing (key missing)" if value is None else type(value).__name__


def _toml_flag(rule: Mapping[str, object], key: str, where: str) -> bool:
    value = rule.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {_type_name(value)}")
    return value


def _toml_rule(rule: object, where: str) -> AclRule:
    if not isinstance(rule, Mapping):
        raise ConfigError(f"{where}: expected a table, got {_type_name(rule)}")
    for key in rule:
        if key not in _TOML_RULE_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (expected {', '.join(_TOML_RULE_KEYS)})"
            )
    user = _toml_string(rule, "user", where) if "user" in rule else None
    anonymous = _toml_flag(rule, "anonymous", where)
    pattern = _toml_flag(rule, "pattern", where)
    if (user is not None) + anonymous + pattern != 1:
        raise ConfigError(
            f'{where}: needs exactly one of user = "NAME", anonymous = true or pattern = true'
        )
    access = _toml_string(rule, "access", where)
    if access not in _ACCESS_WORDS:
        raise ConfigError(
            f"{where}.access: expected one of read, write, readwrite, deny, got {access!r}"
        )
    topic = _toml_string(rule, "topic", where)
    try:
        _check_rule_topic(topic)
    except ValueError as exc:
        raise ConfigError(f"{where}.topic: {exc}") from None
    return AclRule(
        source=where,
        kind="pattern" if pattern else "topic",
        owner=user,
        access=_as_rule_access(access),
        topic=topic,
    )


def acl_from_toml(data: Mapping[str, object], source: str = "acl") -> AclRules:
    """Compile the ``[acl]`` table (``{"rules": [...]}``); errors name the offending key."""
    for key in data:
        if key != "rules":
            raise ConfigError(f"{source}: unknown key {key!r} (expected rules)")
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError(
            f"{source}.rules: expected an array of tables ([[{source}.rules]]), "
            f"got {_type_name(rules)}"
        )
    return AclRules(
        [_toml_rule(rule, f"{source}.rules[{index}]") for index, rule in enumerate(rules)]
    )
