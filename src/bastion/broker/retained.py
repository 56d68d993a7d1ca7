"""Retained messages by topic, in a level trie so a new subscription finds its matches fast.

Generic over the stored value (``broker/core.py`` decides what a retained message is);
matching follows ``bastion.mqtt.topics.topic_matches``, which its tests compare it with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from bastion.mqtt.topics import parse_shared, validate_topic_name

__all__ = ["RetainedStore"]

T = TypeVar("T")


class _Node(Generic[T]):
    """One topic level; ``item`` is the (topic, value) retained at exactly this topic."""

    __slots__ = ("children", "item")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] | None = None
        self.item: tuple[str, T] | None = None


class RetainedStore(Generic[T]):
    """At most one retained value per topic name, found by topic or by topic filter."""

    __slots__ = ("_root", "_values")

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._values: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, topic: object) -> bool:
        return topic in self._values

    def get(self, topic: str) -> T | None:
        """The value retained at exactly ``topic``, or None."""
        return self._values.get(topic)

    def items(self) -> list[tuple[str, T]]:
        """A snapshot of every (topic, value), in the order the topics were first retained."""
        return list(self._values.items())

    def set(self, topic: str, value: T) -> None:
        """Retain ``value`` at ``topic``, replacing what was there.

        Raises ``ProtocolError`` (0x90) if ``topic`` is not a valid topic name.
        """
        validate_topic_name(topic)
        node = self._root
        for level in topic.split("/"):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _Node()
            node = child
        node.item = (topic, value)
        self._values[topic] = value

    def delete(self, topic: str) -> bool:
        """Forget the value retained at ``topic``; False if there was none."""
        if topic not in self._values:
            return False
        del self._values[topic]
        levels = topic.split("/")
        path = [self._root]
        for level in levels:
            children = path[-1].children
            child = None if children is None else children.get(level)
            if child is None:
                raise KeyError(f"retained index and trie disagree on {topic!r}")
            path.append(child)
        path[-1].item = None
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.item is not None or node.children is not None:
                break
            parent_children = path[depth - 1].children
            if parent_children is not None:
                del parent_children[levels[depth - 1]]
                if not parent_children:
                    path[depth - 1].children = None
        return True

    def match(self, topic_filter: str) -> Iterator[tuple[str, T]]:
        """Every retained (topic, value) that the (validated) filter matches, in no order.

        The result is a snapshot, so the store may be changed while iterating it. A
        ``$share/{ShareName}/`` prefix is ignored: MQTT 5 sends no retained messages to new
        shared subscriptions, and that decision is the caller's.
        """
        _, topic_filter = parse_shared(topic_filter)
        found: list[tuple[str, T]] = []
        frontier: list[_Node[T]] = [self._root]
        following: list[_Node[T]] = []
        for depth, level in enumerate(topic_filter.split("/")):
            at_root = depth == 0  # wildcards at the root skip '$' topics
            if level == "#":
                _collect_subtrees(frontier, found, skip_dollar=at_root)
                return iter(found)
            for node in frontier:
                children = node.children
                if children is None:
                    continue
                if level != "+":
                    child = children.get(level)
                    if child is not None:
                        following.append(child)
                elif at_root:
                    following.extend(c for k, c in children.items() if not k.startswith("$"))
                else:
                    following.extend(children.values())
            if not following:
                return iter(found)
            frontier, following = following, frontier
            following.clear()
        for node in frontier:
            if node.item is not None:
                found.append(node.item)
        return iter(found)

    def node_count(self) -> int:
        """Number of trie nodes, root included (diagnostics: it tracks live topics only)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            if node.children is not None:
                stack.extend(node.children.values())
        return count


def _collect_subtrees(
    roots: list[_Node[T]], found: list[tuple[str, T]], *, skip_dollar: bool
) -> None:
    """Append every item at or below ``roots``; at the trie root, skip '$' first levels."""
    stack: list[_Node[T]] = []
    if skip_dollar:  # roots is [trie root], which never holds an item itself
        for root in roots:
            if root.children is not None:
                stack.extend(c for k, c in root.children.items() if not k.startswith("$"))
    else:
        stack.extend(roots)
    while stack:
        node = stack.pop()
        if node.item is not None:
            found.append(node.item)
        if node.children is not None:
            stack.extend(node.children.values())
