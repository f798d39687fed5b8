"""Sharding's pure rules (controller/shards.py): which shard a strategy is in, the fair
share, and which live replicas are configured otherwise."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from phasegate.controller.shards import conflicting, fair_share, live_leases, member_lease, shard_of

NOW = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


def lease(name: str, holder: str, renewed_ago: float, duration: int = 15):
    return SimpleNamespace(metadata=SimpleNamespace(name=name), spec=SimpleNamespace(
        holder_identity=holder, renew_time=NOW - timedelta(seconds=renewed_ago), lease_duration_seconds=duration))


@given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=64))
def test_the_fair_shares_cover_every_shard(shards, members):
    assert fair_share(shards, members) * members >= shards
    assert (fair_share(shards, members) - 1) * members < shards


def test_shards_are_stable_and_spread():
    names = [f"s{i}" for i in range(3000)]
    counts = Counter(shard_of("desk", n, 3) for n in names)
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 800
    assert all(shard_of("desk", n, 3) == shard_of("desk", n, 3) for n in names[:50])
    assert shard_of("a", "b", 1) == 0


def test_only_leases_renewed_within_their_duration_are_live():
    live = live_leases([lease("a", "x", 5), lease("b", "y", 20), lease("c", "", 1)], NOW)
    assert live == {"a": "x"}


def test_a_replica_configured_otherwise_is_a_conflict():
    live = {member_lease(3, "op-a"): "op-a", member_lease(3, "op-b"): "op-b"}
    assert conflicting(live, 3) == []
    assert conflicting({**live, member_lease(4, "op-c"): "op-c"}, 3) == ["op-c (phasegate-member-4-op-c)"]
    assert conflicting({**live, "phasegate-leader": "op-old"}, 3) == ["op-old (unsharded leader)"]
    # an unsharded replica never takes the leader lease beside sharded ones
    assert len(conflicting(live, 1)) == 2
    assert conflicting({"phasegate-leader": "op-old", "other-lease": "z"}, 1) == []


def test_member_lease_names_are_valid_object_names():
    import re

    for ident in ("vm_14134", "Op-A", "phasegate-7d9f-x2", "__", "a" * 300):
        name = member_lease(6, ident)
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name) and len(name) <= 253, name
    assert member_lease(6, "vm_1") != member_lease(6, "vm_2")
