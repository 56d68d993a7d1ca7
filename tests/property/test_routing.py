"""Property tests: the routing tries agree with the reference matcher ``topic_matches``.

Random filters and topics come from a small level alphabet (with empty and '$' levels) so
that they collide often; add/remove sequences are checked against a plain dict model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.broker.retained import RetainedStore
from bastion.broker.subscriptions import SubscriptionEntry, SubscriptionTrie
from bastion.errors import ProtocolError
from bastion.mqtt.packets import Subscription
from bastion.mqtt.topics import (
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

ROUTING = settings(max_examples=300, deadline=None)

LEVELS = ["a", "b", "ab", "", "$SYS", "$x"]
CLIENTS = ["c1", "c2", "c3"]
SHARES = ["g1", "g2"]
MEMBERS = [f"m{i}" for i in range(6)]

topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=5).map("/".join).filter(bool)


def _filter_from(levels: list[str], hash_tail: bool) -> str:
    if hash_tail or not levels:
        levels = [*levels, "#"]
    return "/".join(levels) or "#"


plain_filters = st.builds(
    _filter_from,
    st.lists(st.sampled_from([*LEVELS, "+", "+"]), max_size=5),
    st.booleans(),
)
shared_filters = st.builds(lambda g, f: f"$share/{g}/{f}", st.sampled_from(SHARES), plain_filters)
filters = st.one_of(plain_filters, shared_filters)
clients = st.sampled_from(CLIENTS)


def prefixes(paths: Iterable[str]) -> int:
    """Distinct non-empty level prefixes of ``paths``: the nodes a pruned trie must hold."""
    seen: set[tuple[str, ...]] = set()
    for path in paths:
        levels = tuple(path.split("/"))
        seen.update(levels[:i] for i in range(1, len(levels) + 1))
    return len(seen)


Key = tuple[str, str]  # (client_id, full filter)


def check_trie(
    trie: SubscriptionTrie, model: dict[Key, SubscriptionEntry], probe: list[str]
) -> None:
    """The trie holds exactly ``model`` and matches every probe topic like the reference."""
    assert len(trie) == len(model)
    for client in CLIENTS:
        assert trie.subscriptions_of(client) == [e for (c, _), e in model.items() if c == client]
    for topic in probe:
        entries, groups = trie.match(topic)
        got = [(e.client_id, e.subscription.topic_filter) for e in entries]
        assert len(got) == len(set(got))
        for e in entries:
            assert model[e.client_id, e.subscription.topic_filter] is e
        expected = {
            key for key in model if parse_shared(key[1])[0] is None and topic_matches(key[1], topic)
        }
        assert set(got) == expected
        got_groups = {(g.name, g.topic_filter): list(g.members) for g in groups}
        assert len(got_groups) == len(groups)
        expected_groups: dict[tuple[str | None, str], list[str]] = {}
        for client, full in model:
            share, plain = parse_shared(full)
            if share is not None and topic_matches(full, topic):
                expected_groups.setdefault((share, plain), []).append(client)
        assert got_groups == expected_groups
        for g in groups:
            for client, member in g.members.items():
                assert model[client, f"$share/{g.name}/{g.topic_filter}"] is member
    assert trie.node_count() == 1 + prefixes(parse_shared(f)[1] for _, f in model)


@ROUTING
@given(st.lists(st.tuples(clients, filters), max_size=20), st.lists(topics, max_size=10))
def test_trie_match_agrees_with_reference(subs: list[Key], probe: list[str]) -> None:
    trie = SubscriptionTrie()
    model: dict[Key, SubscriptionEntry] = {}
    for client, topic_filter in subs:
        new = SubscriptionEntry(client, Subscription(topic_filter), None)
        assert trie.add(new) is ((client, topic_filter) not in model)
        model[client, topic_filter] = new
    check_trie(trie, model, probe)


TrieOp = (
    tuple[Literal["add"], str, int, int]  # client, filter index, qos
    | tuple[Literal["remove"], str, int]
    | tuple[Literal["remove_client"], str]
)

trie_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), clients, st.integers(0, 7), st.integers(0, 2)),
        st.tuples(st.just("remove"), clients, st.integers(0, 7)),
        st.tuples(st.just("remove_client"), clients),
    ),
    max_size=30,
)


@ROUTING
@given(st.lists(filters, min_size=8, max_size=8), trie_ops, st.lists(topics, max_size=8))
def test_trie_add_remove_sequences(pool: list[str], ops: list[TrieOp], probe: list[str]) -> None:
    trie = SubscriptionTrie()
    model: dict[Key, SubscriptionEntry] = {}
    for op in ops:
        if op[0] == "add":
            _, client, index, qos = op
            new = SubscriptionEntry(client, Subscription(pool[index], qos=qos), index)
            assert trie.add(new) is ((client, pool[index]) not in model)
            model[client, pool[index]] = new
        elif op[0] == "remove":
            _, client, index = op
            assert trie.remove(client, pool[index]) is ((client, pool[index]) in model)
            model.pop((client, pool[index]), None)
        else:
            _, client = op
            mine = [key for key in model if key[0] == client]
            assert trie.remove_client(client) == len(mine)
            for key in mine:
                del model[key]
    check_trie(
        trie,
        model,
        [*probe, *(parse_shared(f)[1].replace("+", "a").replace("#", "b") for f in pool)],
    )
    for client in CLIENTS:
        trie.remove_client(client)
    assert len(trie) == 0
    assert trie.node_count() == 1


@ROUTING
@given(
    st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=6, unique=True),
    st.sets(st.sampled_from(MEMBERS)),
    st.integers(0, 5),
    st.integers(1, 4),
)
def test_shared_pick_rotates_fairly(
    members: list[str], online: set[str], warmup: int, rounds: int
) -> None:
    trie = SubscriptionTrie()
    for client in members:
        trie.add(SubscriptionEntry(client, Subscription("$share/g/t"), None))
    group = trie.match("t")[1][0]
    for _ in range(warmup):
        group.pick(lambda _c: True)
    eligible = [c for c in members if c in online]
    counts = dict.fromkeys(eligible, 0)
    for _ in range(rounds * len(eligible)):
        chosen = group.pick(online.__contains__)
        assert chosen is not None
        counts[chosen.client_id] += 1
    assert all(n == rounds for n in counts.values())
    if not eligible:
        assert group.pick(online.__contains__) is None


RetainedOp = tuple[Literal["set"], int, int] | tuple[Literal["delete"], int]

retained_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 7), st.integers()),
        st.tuples(st.just("delete"), st.integers(0, 7)),
    ),
    max_size=30,
)


@ROUTING
@given(st.lists(topics, min_size=8, max_size=8), retained_ops, st.lists(filters, max_size=8))
def test_retained_agrees_with_reference(
    pool: list[str], ops: list[RetainedOp], probe: list[str]
) -> None:
    store: RetainedStore[int] = RetainedStore()
    model: dict[str, int] = {}
    for op in ops:
        if op[0] == "set":
            _, index, value = op
            store.set(pool[index], value)
            model[pool[index]] = value
        else:
            _, index = op
            assert store.delete(pool[index]) is (pool[index] in model)
            model.pop(pool[index], None)
    assert len(store) == len(model)
    assert store.items() == list(model.items())
    for topic in pool:
        assert store.get(topic) == model.get(topic)
    for topic_filter in [*probe, "#", "+", "+/+", "$SYS/#"]:
        found = list(store.match(topic_filter))
        assert len(found) == len({t for t, _ in found})
        expected = {(t, v) for t, v in model.items() if topic_matches(topic_filter, t)}
        assert set(found) == expected
    assert store.node_count() == 1 + prefixes(model)
    for topic in list(model):
        store.delete(topic)
    assert store.node_count() == 1


def regex_for(topic_filter: str) -> re.Pattern[str]:
    """An independent oracle for ``topic_matches``, built from a filter as a regex."""
    _, plain = parse_shared(topic_filter)
    levels = plain.split("/")
    tail = ""
    if levels[-1] == "#":
        levels.pop()
        tail = "(?:/.*)?" if levels else ".*"
    body = "/".join("[^/]*" if level == "+" else re.escape(level) for level in levels)
    guard = "(?!\\$)" if plain[:1] in ("+", "#") else ""
    return re.compile(guard + body + tail, re.DOTALL)


@ROUTING
@given(filters, topics)
def test_reference_matcher_agrees_with_regex(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic) is bool(regex_for(topic_filter).fullmatch(topic))


@ROUTING
@given(filters, topics)
def test_generated_filters_and_topics_are_valid(topic_filter: str, topic: str) -> None:
    validate_topic_filter(topic_filter)
    validate_topic_name(topic)
    assert topic_matches(topic, topic)  # a topic name is a filter matching itself


@ROUTING
@given(st.lists(st.sampled_from(["a", "/", "+", "#", "$", "\x00", "é", "$share/"])).map("".join))
def test_validation_raises_only_protocol_errors(text: str) -> None:
    for validate, reason in ((validate_topic_name, 0x90), (validate_topic_filter, 0x8F)):
        try:
            validate(text)
        except ProtocolError as exc:
            assert exc.reason == reason


RouteOp = tuple[Literal["add"], str, int, int, bool, bool] | tuple[Literal["remove"], str, int]

route_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            clients,
            st.integers(0, 5),
            st.integers(0, 2),
            st.booleans(),  # no local
            st.booleans(),  # retain as published
        ),
        st.tuples(st.just("remove"), clients, st.integers(0, 5)),
    ),
    max_size=25,
)


def expected_route(
    model: dict[Key, SubscriptionEntry], topic: str
) -> dict[str, tuple[int, bool, list[int], tuple[int, bool, list[int]] | None]]:
    """client -> (qos, rap, sorted ids, the same for a message the client published itself)."""
    own: dict[str, list[SubscriptionEntry]] = {}
    for (client, full), entry in model.items():
        if parse_shared(full)[0] is None and topic_matches(full, topic):
            own.setdefault(client, []).append(entry)

    def merged(entries: list[SubscriptionEntry]) -> tuple[int, bool, list[int]]:
        return (
            max(e.subscription.qos for e in entries),
            any(e.subscription.retain_as_published for e in entries),
            sorted(e.identifier for e in entries if e.identifier is not None),
        )

    result: dict[str, tuple[int, bool, list[int], tuple[int, bool, list[int]] | None]] = {}
    for client, entries in own.items():
        local = [e for e in entries if not e.subscription.no_local]
        result[client] = (*merged(entries), merged(local) if local else None)
    return result


@ROUTING
@given(st.lists(plain_filters, min_size=6, max_size=6), route_ops, st.lists(topics, max_size=6))
def test_route_cache_follows_every_change(
    pool: list[str], ops: list[RouteOp], probe: list[str]
) -> None:
    """``route`` (cached per topic) always equals a fresh merge of the current entries."""
    trie = SubscriptionTrie()
    model: dict[Key, SubscriptionEntry] = {}
    probe = [*probe, *(f.replace("+", "a").replace("#", "b") for f in pool)]
    for number, op in enumerate(ops):
        if op[0] == "add":
            _, client, index, qos, no_local, rap = op
            sub = Subscription(pool[index], qos=qos, no_local=no_local, retain_as_published=rap)
            model[client, pool[index]] = SubscriptionEntry(client, sub, number or None)
            trie.add(model[client, pool[index]])
        else:
            _, client, index = op
            trie.remove(client, pool[index])
            model.pop((client, pool[index]), None)
        for topic in probe:
            route = trie.route(topic)
            assert trie.route(topic) is route  # remembered until the next change
            got = {}
            for target in route.targets:
                origin = target.merged_for_origin()
                got[target.client_id] = (
                    target.qos,
                    target.retain_as_published,
                    sorted(target.identifiers),
                    None if origin is None else (origin[0], origin[1], sorted(origin[2])),
                )
            assert got == expected_route(model, topic)
