"""The record arithmetic of rollouts and rollbacks (coordinator/versions.py): pure, no cluster."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import versions
from coordinator.versions import (
    MAX_VERSIONS,
    add_version,
    drop_version,
    restore,
    rollback_target,
    set_weight,
    share,
    takes_all,
)
from schemas.admin import HistoryEntry
from schemas.errors import BadRequest, NotFound
from schemas.manifest import Manifest
from schemas.messages import DeploymentRecord, VersionEntry

NOW = 1_717_171_717_000


def entry(version: str, weight: int = 100, digest_char: str = "a") -> VersionEntry:
    manifest = Manifest(
        name="echo",
        version=version,
        abi="forge/1",
        wasm_sha256="0" * 64,
        exports=["echo"],
    )
    digest = (digest_char + version.replace(".", "")).ljust(64, "0")[:64]
    return VersionEntry(version, digest, manifest, weight, "0c6cf46c6953fcb5")


def record(*weights: tuple[str, int], at: int = NOW - 1000) -> DeploymentRecord:
    return DeploymentRecord(
        plugin="echo",
        versions=[entry(v, w) for v, w in weights],
        config={"greeting": "hi"},
        deployed_at_ms=at,
    )


def weights(r: DeploymentRecord) -> list[tuple[str, int]]:
    return [(v.version, v.weight) for v in r.versions]


# --- deploy --canary -------------------------------------------------------------------------
def test_canary_is_added_at_weight_zero_and_keeps_the_others() -> None:
    cur = record(("1.0.0", 100))
    new = add_version(cur, entry("2.0.0"), {"extra": "1"}, NOW)
    assert weights(new) == [("1.0.0", 100), ("2.0.0", 0)]
    assert new.config == {"greeting": "hi", "extra": "1"}
    assert new.deployed_at_ms == NOW


def test_canary_of_a_plugin_not_deployed_takes_every_call() -> None:
    new = add_version(None, entry("1.0.0", weight=0), {}, NOW)
    assert weights(new) == [("1.0.0", 100)]


def test_canary_of_the_same_package_changes_nothing_and_of_other_bytes_is_refused() -> None:
    cur = record(("1.0.0", 100))
    assert add_version(cur, entry("1.0.0"), {}, NOW) is cur
    with pytest.raises(BadRequest, match="already deployed from another package"):
        add_version(cur, entry("1.0.0", digest_char="b"), {}, NOW)


def test_canary_count_is_bounded() -> None:
    cur = record(*[(f"1.0.{i}", 100 if i == 0 else 0) for i in range(MAX_VERSIONS)])
    with pytest.raises(BadRequest, match=f"already has {MAX_VERSIONS} versions"):
        add_version(cur, entry("9.0.0"), {}, NOW)


# --- rollout ---------------------------------------------------------------------------------
def test_rollout_scales_the_others_to_the_remainder() -> None:
    cur = record(("1.0.0", 100), ("2.0.0", 0))
    ten = set_weight(cur, "2.0.0", 10, NOW)
    assert weights(ten) == [("1.0.0", 90), ("2.0.0", 10)]
    full = set_weight(ten, "2.0.0", 100, NOW + 1)
    assert weights(full) == [("1.0.0", 0), ("2.0.0", 100)], "others stay, at weight 0"
    three = record(("1.0.0", 60), ("2.0.0", 30), ("3.0.0", 10))
    assert weights(set_weight(three, "3.0.0", 50, NOW)) == [
        ("1.0.0", 33),
        ("2.0.0", 17),
        ("3.0.0", 50),
    ]
    # the others all at 0: the remainder is split equally
    idle = record(("1.0.0", 0), ("2.0.0", 0), ("3.0.0", 100))
    assert weights(set_weight(idle, "3.0.0", 51, NOW)) == [
        ("1.0.0", 25),
        ("2.0.0", 24),
        ("3.0.0", 51),
    ]


def test_rollout_refusals() -> None:
    with pytest.raises(NotFound, match=r"has no version '3\.0\.0'"):
        set_weight(record(("1.0.0", 100), ("2.0.0", 0)), "3.0.0", 10, NOW)
    with pytest.raises(BadRequest, match="only version"):
        set_weight(record(("1.0.0", 100)), "1.0.0", 50, NOW)
    with pytest.raises(BadRequest, match="between 0 and 100"):
        set_weight(record(("1.0.0", 100), ("2.0.0", 0)), "2.0.0", 101, NOW)
    assert weights(set_weight(record(("1.0.0", 100)), "1.0.0", 100, NOW)) == [("1.0.0", 100)]


def test_every_change_is_newer_than_the_record_it_replaces() -> None:
    """Workers ignore a record older than the one they hold, so a clock behind must not win."""
    ahead = record(("1.0.0", 100), ("2.0.0", 0), at=NOW + 60_000)
    assert set_weight(ahead, "2.0.0", 10, NOW).deployed_at_ms == NOW + 60_001
    assert drop_version(ahead, "2.0.0", NOW).deployed_at_ms == NOW + 60_001
    assert add_version(ahead, entry("3.0.0"), {}, NOW).deployed_at_ms == NOW + 60_001
    assert restore(record(("1.0.0", 100), at=1), ahead, NOW).deployed_at_ms == NOW + 60_001


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.integers(0, 100), min_size=2, max_size=MAX_VERSIONS),
    st.integers(0, 100),
    st.data(),
)
def test_rollout_weights_are_whole_percents_that_sum_to_100(
    ws: list[int], weight: int, data: st.DataObject
) -> None:
    cur = record(*[(f"1.0.{i}", w) for i, w in enumerate(ws)])
    target = data.draw(st.integers(0, len(ws) - 1))
    new = set_weight(cur, f"1.0.{target}", weight, NOW)
    got = [v.weight for v in new.versions]
    assert sum(got) == 100
    assert got[target] == weight
    assert all(0 <= w <= 100 for w in got)
    others = [(ws[i], got[i]) for i in range(len(ws)) if i != target]
    # proportions are kept: a version that had more never ends with less
    for before_a, after_a in others:
        for before_b, after_b in others:
            if before_a > before_b:
                assert after_a >= after_b


@given(st.integers(0, 100), st.lists(st.integers(0, 1000), min_size=1, max_size=10))
def test_share_is_exact(total: int, ws: list[int]) -> None:
    parts = share(total, ws)
    assert sum(parts) == total and len(parts) == len(ws)
    assert all(p >= 0 for p in parts)


# --- undeploy --version ------------------------------------------------------------------------
def test_only_a_version_without_traffic_is_dropped() -> None:
    cur = record(("1.0.0", 0), ("2.0.0", 100))
    assert weights(drop_version(cur, "1.0.0", NOW)) == [("2.0.0", 100)]
    with pytest.raises(BadRequest, match="still takes 100% of calls"):
        drop_version(cur, "2.0.0", NOW)
    with pytest.raises(BadRequest, match="only version"):
        drop_version(record(("1.0.0", 0)), "1.0.0", NOW)
    with pytest.raises(NotFound):
        drop_version(cur, "3.0.0", NOW)


# --- rollback -----------------------------------------------------------------------------------
def history() -> list[HistoryEntry]:
    """deploy 1.0.0, canary 2.0.0, rollout 10%, rollout 100% (the current record)."""
    return [
        HistoryEntry(1, NOW, record(("1.0.0", 100))),
        HistoryEntry(2, NOW, record(("1.0.0", 100), ("2.0.0", 0))),
        HistoryEntry(3, NOW, record(("1.0.0", 90), ("2.0.0", 10))),
        HistoryEntry(4, NOW, record(("1.0.0", 0), ("2.0.0", 100))),
    ]


def test_rollback_to_a_version_finds_the_latest_record_where_it_took_every_call() -> None:
    target = rollback_target("echo", history(), to_version="1.0.0")
    assert target.revision == 2, "the canary record: 1.0.0 takes all, 2.0.0 stays warm"
    with pytest.raises(BadRequest, match="already takes every call"):
        rollback_target("echo", history(), to_version="2.0.0")
    with pytest.raises(NotFound, match=r"in which 0\.9\.0 took every call"):
        rollback_target("echo", history(), to_version="0.9.0")


def test_rollback_without_a_target_undoes_the_last_change() -> None:
    h = history()
    assert rollback_target("echo", h).revision == 3
    # a rollback wrote revision 3's record again: rolling back once more undoes that
    h.append(HistoryEntry(5, NOW, h[2].record))
    assert rollback_target("echo", h).revision == 4
    # a record identical to the current one (the same change written twice) is skipped
    h.append(HistoryEntry(6, NOW, h[4].record))
    assert rollback_target("echo", h).revision == 4


def test_rollback_after_undeploy_restores_the_last_record() -> None:
    h = [*history(), HistoryEntry(5, NOW, None)]
    assert rollback_target("echo", h).revision == 4


def test_rollback_to_a_revision() -> None:
    h = [*history(), HistoryEntry(5, NOW, None), HistoryEntry(6, NOW, record(("3.0.0", 100)))]
    assert rollback_target("echo", h, revision=1).revision == 1
    with pytest.raises(BadRequest, match="is an undeploy"):
        rollback_target("echo", h, revision=5)
    with pytest.raises(BadRequest, match="current record"):
        rollback_target("echo", h, revision=6)
    with pytest.raises(NotFound, match="no revision 99"):
        rollback_target("echo", h, revision=99)


def test_rollback_with_nothing_earlier() -> None:
    with pytest.raises(NotFound, match="never been deployed"):
        rollback_target("echo", [])
    with pytest.raises(NotFound, match="no earlier deployment"):
        rollback_target("echo", history()[:1])


def test_takes_all() -> None:
    assert takes_all(record(("1.0.0", 100)), "1.0.0")
    assert takes_all(record(("1.0.0", 0)), "1.0.0"), "a sole version serves every call"
    assert takes_all(record(("1.0.0", 100), ("2.0.0", 0)), "1.0.0")
    assert not takes_all(record(("1.0.0", 90), ("2.0.0", 10)), "1.0.0")
    assert not takes_all(record(("1.0.0", 100)), "2.0.0")


def test_restore_keeps_the_earlier_record_but_its_time() -> None:
    earlier = history()[1].record
    assert earlier is not None
    back = restore(earlier, history()[3].record, NOW + 5)
    assert back == dataclasses.replace(earlier, deployed_at_ms=NOW + 5)
    assert versions.same_traffic(back, earlier)
