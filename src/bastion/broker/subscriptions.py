"""The subscription trie: which sessions, and which shared groups, a published topic reaches.

Filters are validated with ``bastion.mqtt.topics``, whose ``topic_matches`` is the reference
this trie is property-tested against; ``broker/core.py`` routes every PUBLISH through ``match``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bastion.mqtt.packets import Subscription
from bastion.mqtt.topics import parse_shared, validate_topic_filter

__all__ = ["Route", "RouteTarget", "SharedGroup", "SubscriptionEntry", "SubscriptionTrie"]

ROUTE_CACHE_SIZE = 4096  # topics whose routes are remembered (oldest forgotten first)


@dataclass(frozen=True, slots=True)
class SubscriptionEntry:
    """One client's subscription to one filter.

    For a shared subscription ``subscription.topic_filter`` is the full filter, including
    its ``$share/{ShareName}/`` prefix; ``identifier`` is the MQTT 5 Subscription Identifier.
    """

    client_id: str
    subscription: Subscription
    identifier: int | None = None


class RouteTarget:
    """One client's non-shared subscriptions that match one topic, merged (§3.3.4).

    ``qos`` is the highest granted QoS, ``retain_as_published`` whether any of them asks
    for it, ``identifiers`` every Subscription Identifier. ``no_local`` keeps the entries
    themselves when any has No Local set: for a message from that same client only the
    others count (``merged_for_origin``).
    """

    __slots__ = ("client_id", "identifiers", "no_local", "qos", "retain_as_published")

    def __init__(self, client_id: str, entries: list[SubscriptionEntry]) -> None:
        self.client_id = client_id
        self.qos, self.retain_as_published, self.identifiers = _merge(entries)
        self.no_local: tuple[SubscriptionEntry, ...] = (
            tuple(entries) if any(e.subscription.no_local for e in entries) else ()
        )

    def merged_for_origin(self) -> tuple[int, bool, tuple[int, ...]] | None:
        """(qos, retain_as_published, identifiers) for a message this client published
        itself, or None if every matching subscription has No Local set."""
        if not self.no_local:
            return self.qos, self.retain_as_published, self.identifiers
        own = [e for e in self.no_local if not e.subscription.no_local]
        return _merge(own) if own else None


def _merge(entries: list[SubscriptionEntry]) -> tuple[int, bool, tuple[int, ...]]:
    qos = max(e.subscription.qos for e in entries)
    retain = any(e.subscription.retain_as_published for e in entries)
    identifiers = tuple(e.identifier for e in entries if e.identifier is not None)
    return qos, retain, identifiers


class Route:
    """Where one topic goes: merged per-client targets and the matching shared groups."""

    __slots__ = ("groups", "targets")

    def __init__(self, targets: tuple[RouteTarget, ...], groups: tuple[SharedGroup, ...]) -> None:
        self.targets = targets
        self.groups = groups


class SharedGroup:
    """The members of one shared subscription (``$share/{name}/{topic_filter}``).

    Each matching message goes to one member, chosen round-robin by ``pick``. Membership
    is changed only by the owning ``SubscriptionTrie``.
    """

    __slots__ = ("_cursor", "_members", "_order", "name", "topic_filter")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self._members: dict[str, SubscriptionEntry] = {}
        self._order: list[str] = []  # client ids in subscription order, indexable for rotation
        self._cursor = 0  # index in _order of the next member to try

    @property
    def members(self) -> Mapping[str, SubscriptionEntry]:
        """client_id -> entry, in the order the members joined (read-only)."""
        return self._members

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return f"SharedGroup({self.name!r}, {self.topic_filter!r}, members={self._order!r})"

    def pick(self, eligible: Callable[[str], bool]) -> SubscriptionEntry | None:
        """The next member, round-robin, for which ``eligible(client_id)`` holds; else None.

        The cursor moves past the chosen member, so successive calls rotate fairly.
        """
        order = self._order
        count = len(order)
        index = self._cursor
        for _ in range(count):
            if index >= count:
                index = 0
            client_id = order[index]
            index += 1
            if eligible(client_id):
                self._cursor = index if index < count else 0
                return self._members[client_id]
        return None

    def _put(self, entry: SubscriptionEntry) -> bool:
        """Add or replace a member's entry; True if the client was not a member before."""
        client_id = entry.client_id
        is_new = client_id not in self._members
        self._members[client_id] = entry
        if is_new:
            self._order.append(client_id)
        return is_new

    def _discard(self, client_id: str) -> None:
        """Remove a member, keeping the rotation where it was for everyone else."""
        if self._members.pop(client_id, None) is None:
            return
        index = self._order.index(client_id)
        del self._order[index]
        if index < self._cursor:
            self._cursor -= 1
        if self._cursor >= len(self._order):
            self._cursor = 0


class _Node:
    """One filter level. '+' and '#' children live apart from the literal ones, so a topic
    level never has to be compared with a wildcard; empty containers are dropped (None)."""

    __slots__ = ("children", "groups", "hash", "plus", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.plus: _Node | None = None
        self.hash: _Node | None = None
        self.subs: dict[str, SubscriptionEntry] | None = None  # client_id -> entry
        self.groups: dict[str, SharedGroup] | None = None  # ShareName -> group

    def is_empty(self) -> bool:
        return (
            self.children is None
            and self.plus is None
            and self.hash is None
            and self.subs is None
            and self.groups is None
        )

    def child(self, level: str) -> _Node | None:
        if level == "+":
            return self.plus
        if level == "#":
            return self.hash
        return None if self.children is None else self.children.get(level)

    def child_or_create(self, level: str) -> _Node:
        node = self.child(level)
        if node is not None:
            return node
        node = _Node()
        if level == "+":
            self.plus = node
        elif level == "#":
            self.hash = node
        elif self.children is None:
            self.children = {level: node}
        else:
            self.children[level] = node
        return node

    def drop_child(self, level: str) -> None:
        if level == "+":
            self.plus = None
        elif level == "#":
            self.hash = None
        elif self.children is not None:
            self.children.pop(level, None)
            if not self.children:
                self.children = None


class SubscriptionTrie:
    """All subscriptions of all sessions, indexed by filter level and by client.

    ``match`` splits the topic once and walks the levels with dict lookups; a per-client
    index makes ``remove_client`` proportional to that client's subscriptions. ``route``
    adds a per-topic cache of merged matches, emptied by every change of a subscription.
    """

    __slots__ = ("_by_client", "_count", "_root", "_routes")

    def __init__(self) -> None:
        self._root = _Node()
        self._by_client: dict[str, dict[str, SubscriptionEntry]] = {}  # client -> full filter
        self._count = 0
        self._routes: dict[str, Route] = {}

    def __len__(self) -> int:
        """Total number of subscriptions, shared ones included."""
        return self._count

    def add(self, entry: SubscriptionEntry) -> bool:
        """Store ``entry``; False if it replaced this client's entry for the same full filter.

        Raises ``ProtocolError`` (0x8F) if the filter is invalid.
        """
        full_filter = entry.subscription.topic_filter
        validate_topic_filter(full_filter)
        share, topic_filter = parse_shared(full_filter)
        self._routes.clear()
        node = self._root
        for level in topic_filter.split("/"):
            node = node.child_or_create(level)
        client_id = entry.client_id
        if share is None:
            if node.subs is None:
                node.subs = {}
            is_new = client_id not in node.subs
            node.subs[client_id] = entry
        else:
            if node.groups is None:
                node.groups = {}
            group = node.groups.get(share)
            if group is None:
                group = node.groups[share] = SharedGroup(share, topic_filter)
            is_new = group._put(entry)
        own = self._by_client.get(client_id)
        if own is None:
            own = self._by_client[client_id] = {}
        own[full_filter] = entry
        if is_new:
            self._count += 1
        return is_new

    def group(self, full_filter: str) -> SharedGroup | None:
        """The shared group of ``$share/{name}/{filter}``, if it has members now."""
        share, topic_filter = parse_shared(full_filter)
        node: _Node | None = self._root
        for level in topic_filter.split("/"):
            node = node.child(level) if node is not None else None
        if share is None or node is None or node.groups is None:
            return None
        return node.groups.get(share)

    def get(self, client_id: str, topic_filter: str) -> SubscriptionEntry | None:
        """The client's entry for this full filter (``$share/`` prefix included), if any."""
        own = self._by_client.get(client_id)
        return None if own is None else own.get(topic_filter)

    def remove(self, client_id: str, topic_filter: str) -> bool:
        """Remove the client's subscription to the full filter; False if there was none."""
        own = self._by_client.get(client_id)
        if own is None or own.pop(topic_filter, None) is None:
            return False
        self._routes.clear()
        if not own:
            del self._by_client[client_id]
        self._detach(client_id, topic_filter)
        self._count -= 1
        return True

    def remove_client(self, client_id: str) -> int:
        """Remove every subscription of the client; returns how many there were."""
        own = self._by_client.pop(client_id, None)
        if own is None:
            return 0
        self._routes.clear()
        for full_filter in own:
            self._detach(client_id, full_filter)
        self._count -= len(own)
        return len(own)

    def count_of(self, client_id: str) -> int:
        """How many subscriptions the client holds (shared ones included)."""
        own = self._by_client.get(client_id)
        return 0 if own is None else len(own)

    def subscriptions_of(self, client_id: str) -> list[SubscriptionEntry]:
        """The client's entries, in the order they were first added."""
        own = self._by_client.get(client_id)
        return [] if own is None else list(own.values())

    def match(self, topic: str) -> tuple[list[SubscriptionEntry], list[SharedGroup]]:
        """Every non-shared entry and every shared group whose filter matches ``topic``.

        ``topic`` must be a valid topic name. Entries come one per (client, filter), in no
        particular order; merging a client's overlapping subscriptions is the caller's job.
        """
        entries: list[SubscriptionEntry] = []
        groups: list[SharedGroup] = []
        levels = topic.split("/")
        root = self._root
        frontier: list[_Node] = []
        following: list[_Node] = []
        # First level by hand: wildcards at the root never match a '$' topic.
        first = levels[0]
        if root.children is not None:
            node = root.children.get(first)
            if node is not None:
                frontier.append(node)
        if not first.startswith("$"):
            if root.hash is not None:
                _collect(root.hash, entries, groups)
            if root.plus is not None:
                frontier.append(root.plus)
        for index in range(1, len(levels)):
            if not frontier:
                return entries, groups
            level = levels[index]
            for node in frontier:
                if node.hash is not None:
                    _collect(node.hash, entries, groups)
                if node.children is not None:
                    child = node.children.get(level)
                    if child is not None:
                        following.append(child)
                if node.plus is not None:
                    following.append(node.plus)
            frontier, following = following, frontier
            following.clear()
        for node in frontier:
            _collect(node, entries, groups)
            if node.hash is not None:  # "a/#" also matches "a"
                _collect(node.hash, entries, groups)
        return entries, groups

    def route(self, topic: str) -> Route:
        """``match`` merged per client, remembered per topic until a subscription changes.

        The result is shared: callers must not change it.
        """
        routes = self._routes
        found = routes.get(topic)
        if found is not None:
            return found
        entries, groups = self.match(topic)
        by_client: dict[str, list[SubscriptionEntry]] = {}
        for entry in entries:
            own = by_client.get(entry.client_id)
            if own is None:
                by_client[entry.client_id] = [entry]
            else:
                own.append(entry)
        found = Route(
            tuple(RouteTarget(client_id, own) for client_id, own in by_client.items()),
            tuple(groups),
        )
        if len(routes) >= ROUTE_CACHE_SIZE:
            del routes[next(iter(routes))]
        routes[topic] = found
        return found

    def node_count(self) -> int:
        """Number of trie nodes, root included (diagnostics: it tracks live filters only)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            if node.children is not None:
                stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.hash is not None:
                stack.append(node.hash)
        return count

    def _detach(self, client_id: str, full_filter: str) -> None:
        """Take the client's entry for ``full_filter`` out of the trie and prune empty nodes."""
        share, topic_filter = parse_shared(full_filter)
        levels = topic_filter.split("/")
        path = [self._root]
        for level in levels:
            child = path[-1].child(level)
            if child is None:
                raise KeyError(f"subscription index and trie disagree on {full_filter!r}")
            path.append(child)
        node = path[-1]
        if share is None:
            if node.subs is not None:
                node.subs.pop(client_id, None)
                if not node.subs:
                    node.subs = None
        elif node.groups is not None:
            group = node.groups.get(share)
            if group is not None:
                group._discard(client_id)
                if not group:
                    del node.groups[share]
                    if not node.groups:
                        node.groups = None
        for depth in range(len(levels), 0, -1):
            if not path[depth].is_empty():
                break
            path[depth - 1].drop_child(levels[depth - 1])


def _collect(node: _Node, entries: list[SubscriptionEntry], groups: list[SharedGroup]) -> None:
    """Append the subscriptions held at a matching node."""
    if node.subs is not None:
        entries.extend(node.subs.values())
    if node.groups is not None:
        groups.extend(node.groups.values())
