"""Unit tests for ``bastion.broker.subscriptions``: the trie, the client index, shared groups.

The property tests in ``tests/property/test_routing.py`` cover random filter sets.
"""

from __future__ import annotations

import pytest

from bastion.broker.subscriptions import SharedGroup, SubscriptionEntry, SubscriptionTrie
from bastion.errors import ProtocolError
from bastion.mqtt.packets import Subscription


def entry(
    client_id: str, topic_filter: str, qos: int = 0, ident: int | None = None
) -> SubscriptionEntry:
    return SubscriptionEntry(client_id, Subscription(topic_filter, qos=qos), ident)


def matched(trie: SubscriptionTrie, topic: str) -> set[tuple[str, str]]:
    entries, _ = trie.match(topic)
    pairs = [(e.client_id, e.subscription.topic_filter) for e in entries]
    assert len(pairs) == len(set(pairs)), "one entry per (client, filter)"
    return set(pairs)


def matched_groups(trie: SubscriptionTrie, topic: str) -> set[tuple[str, str]]:
    _, groups = trie.match(topic)
    return {(g.name, g.topic_filter) for g in groups}


def test_empty_trie() -> None:
    trie = SubscriptionTrie()
    assert len(trie) == 0
    assert trie.match("a/b") == ([], [])
    assert trie.subscriptions_of("c") == []
    assert not trie.remove("c", "a")
    assert trie.remove_client("c") == 0
    assert trie.node_count() == 1


def test_reference_deployment() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("dashboard", "temp/#"))
    trie.add(entry("alerts", "motion/#"))
    trie.add(entry("logger", "#"))
    trie.add(entry("admin", "$SYS/#"))
    assert matched(trie, "temp/sensor1") == {("dashboard", "temp/#"), ("logger", "#")}
    assert matched(trie, "motion/sensor3") == {("alerts", "motion/#"), ("logger", "#")}
    assert matched(trie, "humid/sensor2") == {("logger", "#")}
    assert matched(trie, "$SYS/broker/clients/connected") == {("admin", "$SYS/#")}


def test_spec_examples() -> None:
    trie = SubscriptionTrie()
    for f in ["sport/tennis/player1/#", "sport/+", "+/+", "/+", "+", "#", "+/monitor/Clients"]:
        trie.add(entry("c", f))
    trie.add(entry("sys", "$SYS/monitor/+"))
    assert matched(trie, "sport/tennis/player1") == {("c", "sport/tennis/player1/#"), ("c", "#")}
    assert matched(trie, "sport/tennis/player1/score/wimbledon") == {
        ("c", "sport/tennis/player1/#"),
        ("c", "#"),
    }
    assert matched(trie, "sport") == {("c", "+"), ("c", "#")}
    assert matched(trie, "sport/") == {("c", "sport/+"), ("c", "+/+"), ("c", "#")}
    assert matched(trie, "/finance") == {("c", "+/+"), ("c", "/+"), ("c", "#")}
    assert matched(trie, "$SYS/monitor/Clients") == {("sys", "$SYS/monitor/+")}
    assert matched(trie, "$SYS") == set()


def test_dollar_topic_matched_below_the_first_level() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c", "a/+"))
    trie.add(entry("c", "a/#"))
    assert matched(trie, "a/$b") == {("c", "a/+"), ("c", "a/#")}


def test_hash_matches_parent_level() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c", "a/b/#"))
    assert matched(trie, "a/b") == {("c", "a/b/#")}
    assert matched(trie, "a/b/c/d") == {("c", "a/b/#")}
    assert matched(trie, "a") == set()
    assert matched(trie, "a/bc") == set()


def test_topic_levels_that_look_like_wildcards_match_nothing_extra() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c", "a/+/c"))
    trie.add(entry("d", "a/#"))
    # match() expects valid topic names; a literal '+' level must still not duplicate results.
    assert matched(trie, "a/+/c") == {("c", "a/+/c"), ("d", "a/#")}


def test_add_replaces_same_client_and_filter() -> None:
    trie = SubscriptionTrie()
    assert trie.add(entry("c", "a/b", qos=0))
    assert not trie.add(entry("c", "a/b", qos=1, ident=7))
    assert len(trie) == 1
    entries, _ = trie.match("a/b")
    assert [(e.subscription.qos, e.identifier) for e in entries] == [(1, 7)]
    assert trie.get("c", "a/b") == entry("c", "a/b", qos=1, ident=7)
    assert trie.get("c", "a/c") is None
    assert trie.get("x", "a/b") is None


def test_overlapping_subscriptions_of_one_client_are_all_returned() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c", "a/b"))
    trie.add(entry("c", "a/+"))
    trie.add(entry("c", "#"))
    trie.add(entry("c", "$share/g/a/b"))
    assert len(trie) == 4
    assert matched(trie, "a/b") == {("c", "a/b"), ("c", "a/+"), ("c", "#")}
    assert matched_groups(trie, "a/b") == {("g", "a/b")}


def test_invalid_filter_is_rejected_and_leaves_no_trace() -> None:
    trie = SubscriptionTrie()
    for bad in ["a/#/b", "", "$share/g", "a+"]:
        with pytest.raises(ProtocolError) as info:
            trie.add(entry("c", bad))
        assert info.value.reason == 0x8F
    assert len(trie) == 0
    assert trie.node_count() == 1
    assert trie.subscriptions_of("c") == []


def test_remove_and_prune() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c", "a/b/c"))
    trie.add(entry("d", "a/b"))
    trie.add(entry("c", "a/+/#"))
    nodes = trie.node_count()
    assert not trie.remove("c", "a/b")  # that one is d's
    assert not trie.remove("c", "$share/g/a/b/c")
    assert trie.remove("c", "a/b/c")
    assert not trie.remove("c", "a/b/c")
    assert trie.node_count() == nodes - 1
    assert matched(trie, "a/b/c") == {("c", "a/+/#")}
    assert trie.remove("c", "a/+/#")
    assert trie.remove("d", "a/b")
    assert len(trie) == 0
    assert trie.node_count() == 1
    assert trie.match("a/b") == ([], [])


def test_remove_keeps_nodes_still_in_use() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c", "a/b"))
    trie.add(entry("c", "a/b/c"))
    trie.add(entry("d", "a/b"))
    assert trie.remove("c", "a/b")
    assert matched(trie, "a/b") == {("d", "a/b")}
    assert matched(trie, "a/b/c") == {("c", "a/b/c")}


def test_remove_client_uses_index() -> None:
    trie = SubscriptionTrie()
    filters = ["a/b", "a/+", "#", "$share/g/a/b", "$share/h/#", "$SYS/#"]
    for f in filters:
        trie.add(entry("c", f))
    trie.add(entry("d", "a/b"))
    trie.add(entry("d", "$share/g/a/b"))
    assert [e.subscription.topic_filter for e in trie.subscriptions_of("c")] == filters
    assert trie.remove_client("c") == len(filters)
    assert trie.remove_client("c") == 0
    assert trie.subscriptions_of("c") == []
    assert len(trie) == 2
    assert matched(trie, "a/b") == {("d", "a/b")}
    _, groups = trie.match("a/b")
    assert [list(g.members) for g in groups] == [["d"]]
    assert trie.remove_client("d") == 2
    assert trie.node_count() == 1


def test_shared_groups() -> None:
    trie = SubscriptionTrie()
    assert trie.add(entry("c1", "$share/consumer1/sport/tennis/+"))
    assert trie.add(entry("c2", "$share/consumer1/sport/tennis/+"))
    assert trie.add(entry("c3", "$share/consumer2/sport/tennis/+"))
    assert not trie.add(entry("c1", "$share/consumer1/sport/tennis/+", qos=2))
    assert len(trie) == 3
    entries, groups = trie.match("sport/tennis/player1")
    assert entries == []
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"consumer1", "consumer2"}
    one = by_name["consumer1"]
    assert one.topic_filter == "sport/tennis/+"
    assert list(one.members) == ["c1", "c2"]
    assert one.members["c1"].subscription.qos == 2
    assert one.members["c1"].subscription.topic_filter == "$share/consumer1/sport/tennis/+"
    assert len(one) == 2
    assert trie.match("sport/tennis") == ([], [])

    assert trie.remove("c1", "$share/consumer1/sport/tennis/+")
    assert not trie.remove("c1", "sport/tennis/+")
    _, groups = trie.match("sport/tennis/x")
    assert {g.name: list(g.members) for g in groups} == {"consumer1": ["c2"], "consumer2": ["c3"]}
    trie.remove_client("c2")
    trie.remove_client("c3")
    assert trie.node_count() == 1


def test_shared_group_with_dollar_and_hash() -> None:
    trie = SubscriptionTrie()
    trie.add(entry("c1", "$share/g/#"))
    assert matched_groups(trie, "a") == {("g", "#")}
    assert matched_groups(trie, "$SYS/a") == set()


def group_of(*clients: str) -> SharedGroup:
    trie = SubscriptionTrie()
    for c in clients:
        trie.add(entry(c, "$share/g/t"))
    _, groups = trie.match("t")
    assert len(groups) == 1
    return groups[0]


def picks(group: SharedGroup, n: int, online: set[str] | None = None) -> list[str | None]:
    result: list[str | None] = []
    for _ in range(n):
        chosen = group.pick(lambda c: online is None or c in online)
        result.append(None if chosen is None else chosen.client_id)
    return result


def test_pick_round_robin() -> None:
    group = group_of("a", "b", "c")
    assert picks(group, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_pick_skips_ineligible_members() -> None:
    group = group_of("a", "b", "c", "d")
    assert picks(group, 5, online={"b", "d"}) == ["b", "d", "b", "d", "b"]
    assert picks(group, 2, online=set()) == [None, None]
    assert picks(group, 3, online={"a"}) == ["a", "a", "a"]


def test_pick_on_empty_group() -> None:
    assert SharedGroup("g", "t").pick(lambda c: True) is None


def test_pick_rotation_survives_membership_changes() -> None:
    trie = SubscriptionTrie()
    for c in ["a", "b", "c", "d"]:
        trie.add(entry(c, "$share/g/t"))
    group = trie.match("t")[1][0]
    assert picks(group, 2) == ["a", "b"]
    trie.remove("a", "$share/g/t")  # before the cursor: "c" is still next
    assert picks(group, 1) == ["c"]
    trie.remove("d", "$share/g/t")  # the cursor's member: wraps to the start
    assert picks(group, 3) == ["b", "c", "b"]
    trie.add(entry("e", "$share/g/t"))  # joins at the end of the rotation
    assert picks(group, 3) == ["c", "e", "b"]


def test_pick_is_fair_over_many_messages() -> None:
    group = group_of(*[f"c{i}" for i in range(5)])
    counts: dict[str | None, int] = {}
    for chosen in picks(group, 1000, online={"c0", "c2", "c3", "c4"}):
        counts[chosen] = counts.get(chosen, 0) + 1
    assert counts == {"c0": 250, "c2": 250, "c3": 250, "c4": 250}


def test_many_clients_churn_leaves_nothing_behind() -> None:
    trie = SubscriptionTrie()
    for i in range(200):
        trie.add(entry(f"c{i}", f"devices/{i}/cmd"))
        trie.add(entry(f"c{i}", f"$share/workers/devices/{i % 7}/+"))
    assert len(trie) == 400
    for i in range(200):
        assert trie.remove_client(f"c{i}") == 2
    assert len(trie) == 0
    assert trie.node_count() == 1
