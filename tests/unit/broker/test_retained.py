"""Unit tests for ``bastion.broker.retained.RetainedStore``.

Random stores are checked against the reference matcher in ``tests/property/test_routing.py``.
"""

from __future__ import annotations

import pytest

from bastion.broker.retained import RetainedStore
from bastion.errors import ProtocolError


def store_of(*topics: str) -> RetainedStore[bytes]:
    store: RetainedStore[bytes] = RetainedStore()
    for topic in topics:
        store.set(topic, topic.encode())
    return store


def matched(store: RetainedStore[bytes], topic_filter: str) -> set[str]:
    found = list(store.match(topic_filter))
    for topic, value in found:
        assert value == topic.encode()
    topics = [topic for topic, _ in found]
    assert len(topics) == len(set(topics))
    return set(topics)


SPEC_TOPICS = (
    "sport",
    "sport/",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport/tennis/player2",
    "/finance",
    "$SYS/monitor/Clients",
    "$SYS",
    "a//c",
    "a/$b",
)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        (
            "sport/tennis/player1/#",
            {
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            },
        ),
        ("sport/tennis/+", {"sport/tennis/player1", "sport/tennis/player2"}),
        ("sport/+", {"sport/"}),
        ("sport/#", {t for t in SPEC_TOPICS if t.startswith("sport")}),
        ("+", {"sport"}),
        ("+/+", {"sport/", "/finance", "a/$b"}),
        ("/+", {"/finance"}),
        ("#", {t for t in SPEC_TOPICS if not t.startswith("$")}),
        ("+/monitor/Clients", set()),
        ("$SYS/#", {"$SYS", "$SYS/monitor/Clients"}),
        ("$SYS/monitor/+", {"$SYS/monitor/Clients"}),
        ("a/+/c", {"a//c"}),
        ("a/+", {"a/$b"}),
        ("sport/tennis/player1", {"sport/tennis/player1"}),
        ("sport/tennis", set()),
        ("nothing/#", set()),
        ("$share/g/sport/+", {"sport/"}),
    ],
)
def test_match_spec_examples(topic_filter: str, expected: set[str]) -> None:
    assert matched(store_of(*SPEC_TOPICS), topic_filter) == expected


def test_set_get_replace_delete() -> None:
    store: RetainedStore[str] = RetainedStore()
    assert len(store) == 0
    assert store.get("a/b") is None
    store.set("a/b", "one")
    store.set("a/b", "two")
    assert len(store) == 1
    assert store.get("a/b") == "two"
    assert "a/b" in store
    assert "a" not in store
    assert store.get("a") is None
    assert list(store.match("a/+")) == [("a/b", "two")]
    assert store.delete("a/b")
    assert not store.delete("a/b")
    assert not store.delete("never/set")
    assert len(store) == 0
    assert list(store.match("#")) == []
    assert store.node_count() == 1


def test_items_is_a_snapshot() -> None:
    store = store_of("a", "b/c")
    items = store.items()
    store.delete("a")
    assert items == [("a", b"a"), ("b/c", b"b/c")]
    assert store.items() == [("b/c", b"b/c")]


def test_delete_while_iterating_a_match() -> None:
    store = store_of("a/1", "a/2", "a/3", "b")
    for topic, _ in store.match("a/#"):
        store.delete(topic)
    assert store.items() == [("b", b"b")]


def test_prefix_topics_survive_deletion_of_longer_ones() -> None:
    store = store_of("a", "a/b", "a/b/c")
    assert store.delete("a/b/c")
    assert store.node_count() == 3
    assert matched(store, "a/#") == {"a", "a/b"}
    assert store.delete("a")
    assert matched(store, "#") == {"a/b"}
    assert store.node_count() == 3  # root, a, a/b: 'a' still leads to 'a/b'
    assert store.delete("a/b")
    assert store.node_count() == 1


@pytest.mark.parametrize("bad", ["", "a/+", "#", "a\x00"])
def test_set_rejects_invalid_topics(bad: str) -> None:
    store: RetainedStore[int] = RetainedStore()
    with pytest.raises(ProtocolError) as info:
        store.set(bad, 1)
    assert info.value.reason == 0x90
    assert len(store) == 0
    assert store.node_count() == 1


def test_churn_leaves_nothing_behind() -> None:
    store: RetainedStore[int] = RetainedStore()
    for i in range(300):
        store.set(f"site/{i % 10}/device/{i}", i)
    assert len(store) == 300
    assert {v for _, v in store.match("site/3/device/+")} == set(range(3, 300, 10))
    for i in range(300):
        assert store.delete(f"site/{i % 10}/device/{i}")
    assert len(store) == 0
    assert store.node_count() == 1
