"""Deployment record arithmetic: stage a version, shift traffic, drop a version, pick a rollback.

Pure functions over :class:`DeploymentRecord` (no I/O); ``versions_admin``
reads the bucket, calls these, and writes the result back. Every record they
return has whole-percent weights that sum to 100 (when the input's did) and a
``deployed_at_ms`` later than the record it replaces, because workers ignore
a record older than the one they hold.

The lifecycle of a version::

    deploy --canary   add it at weight 0: workers load, compile, warm and init it,
                      and it serves only calls that pin it
    rollout V -w N    V takes N%; the others share the rest in their old proportions
    rollout V -w 100  the switch is complete; the others stay loaded at weight 0
    rollback          put an earlier record from the history again (fresh timestamp)
    undeploy --version V
                      drop V, only once it takes no traffic (weight 0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from schemas.admin import HistoryEntry
from schemas.errors import BadRequest, NotFound
from schemas.messages import DeploymentRecord, VersionEntry

#: Versions one deployment may hold at once (each is a loaded, warm pool on every worker).
MAX_VERSIONS = 8


def stamp(now_ms: int, current: DeploymentRecord | None) -> int:
    """A ``deployed_at_ms`` for the record that replaces ``current``: now, but never older."""
    if current is None:
        return now_ms
    return max(now_ms, current.deployed_at_ms + 1)


def find(record: DeploymentRecord, version: str) -> VersionEntry:
    """The entry of ``version``; NotFound naming the versions there are otherwise."""
    for v in record.versions:
        if v.version == version:
            return v
    raise NotFound(
        f"{record.plugin} has no version {version!r} deployed "
        f"(it has {', '.join(v.version for v in record.versions)})"
    )


def takes_all(record: DeploymentRecord, version: str) -> bool:
    """True when ``version`` serves every unpinned call of ``record``."""
    if len(record.versions) == 1:
        return record.versions[0].version == version
    mine = [v.weight for v in record.versions if v.version == version]
    others = sum(v.weight for v in record.versions if v.version != version)
    return bool(mine) and mine[0] > 0 and others == 0


def same_traffic(a: DeploymentRecord | None, b: DeploymentRecord | None) -> bool:
    """True when both records deploy the same packages with the same weights and config."""
    if a is None or b is None:
        return a is b
    key_a = [(v.version, v.digest, v.weight) for v in a.versions]
    key_b = [(v.version, v.digest, v.weight) for v in b.versions]
    return key_a == key_b and a.config == b.config


def share(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` whole percents in proportion to ``weights`` (equally if all are 0).

    Largest remainder: each gets the floor of its exact share, and the percents
    left over go to the largest fractions (earlier entries first on ties).
    """
    if not weights:
        return []
    base = list(weights) if sum(weights) > 0 else [1] * len(weights)
    whole = sum(base)
    out = [total * w // whole for w in base]
    order = sorted(range(len(base)), key=lambda i: (-(total * base[i] % whole), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def add_version(
    current: DeploymentRecord | None,
    entry: VersionEntry,
    config: dict[str, str],
    now_ms: int,
) -> DeploymentRecord:
    """``deploy --canary``: ``entry`` beside the deployed versions, at weight 0.

    With nothing deployed yet it is the only version, at weight 100. The record's
    config is the current one updated with ``config``. Re-staging the very same
    package returns ``current`` itself (the caller writes nothing); the same
    version with other bytes is refused, since calls pin versions by name.
    """
    if current is None:
        return DeploymentRecord(
            plugin=entry.manifest.name,
            versions=[dataclasses.replace(entry, weight=100)],
            config=dict(config),
            deployed_at_ms=now_ms,
        )
    for v in current.versions:
        if v.version == entry.version:
            if v.digest == entry.digest:
                return current
            raise BadRequest(
                f"{current.plugin}@{entry.version} is already deployed from another package "
                f"({v.digest[:12]}); give the new one another version, or remove this one "
                "with `forgeone undeploy --version` once it takes no traffic"
            )
    if len(current.versions) >= MAX_VERSIONS:
        raise BadRequest(
            f"{current.plugin} already has {MAX_VERSIONS} versions deployed; remove one that "
            "takes no traffic with `forgeone undeploy --version` first"
        )
    return DeploymentRecord(
        plugin=current.plugin,
        versions=[*current.versions, dataclasses.replace(entry, weight=0)],
        config={**current.config, **config},
        deployed_at_ms=stamp(now_ms, current),
    )


def set_weight(
    record: DeploymentRecord, version: str, weight: int, now_ms: int
) -> DeploymentRecord:
    """``rollout``: ``version`` takes ``weight`` percent; the others share ``100 - weight``
    in proportion to their current weights (equally if they all had 0)."""
    if not 0 <= weight <= 100:
        raise BadRequest(f"weight {weight} is not a percent between 0 and 100")
    target = find(record, version)
    others = [v for v in record.versions if v.version != version]
    if not others and weight != 100:
        raise BadRequest(
            f"{version} is the only version of {record.plugin}: it takes every call "
            "(stage another with `forgeone deploy --canary` first)"
        )
    shares = iter(share(100 - weight, [v.weight for v in others]))
    versions = [
        dataclasses.replace(v, weight=weight if v is target else next(shares))
        for v in record.versions
    ]
    return dataclasses.replace(record, versions=versions, deployed_at_ms=stamp(now_ms, record))


def drop_version(record: DeploymentRecord, version: str, now_ms: int) -> DeploymentRecord:
    """``undeploy --version``: remove ``version``, which must take no traffic."""
    target = find(record, version)
    if len(record.versions) == 1:
        raise BadRequest(
            f"{version} is the only version of {record.plugin}; "
            f"`forgeone undeploy {record.plugin}` removes the whole deployment"
        )
    if target.weight > 0:
        raise BadRequest(
            f"{record.plugin}@{version} still takes {target.weight}% of calls; roll another "
            "version out to 100 first"
        )
    versions = [v for v in record.versions if v is not target]
    return dataclasses.replace(record, versions=versions, deployed_at_ms=stamp(now_ms, record))


def rollback_target(
    plugin: str, history: Sequence[HistoryEntry], to_version: str = "", revision: int = 0
) -> HistoryEntry:
    """The history entry a rollback restores (``history`` oldest first, the current last).

    - ``revision``: exactly that one;
    - ``to_version``: the latest earlier record in which that version took every call;
    - neither: the latest earlier record that differs from the current one (so two
      rollbacks in a row undo each other, like ``kubectl rollout undo``).
    """
    if not history:
        raise NotFound(f"{plugin} has never been deployed")
    current = history[-1].record
    earlier = [e for e in reversed(history[:-1]) if e.record is not None]
    if revision:
        for e in history:
            if e.revision == revision:
                if e is history[-1]:
                    raise BadRequest(f"revision {revision} is {plugin}'s current record")
                if e.record is None:
                    raise BadRequest(f"revision {revision} of {plugin} is an undeploy")
                return e
        raise NotFound(
            f"{plugin} has no revision {revision} in its history "
            f"(it keeps {', '.join(str(e.revision) for e in history)})"
        )
    if to_version:
        if current is not None and takes_all(current, to_version):
            raise BadRequest(f"{plugin}@{to_version} already takes every call")
        for e in earlier:
            assert e.record is not None
            if takes_all(e.record, to_version) and not same_traffic(e.record, current):
                return e
        raise NotFound(
            f"no earlier record of {plugin} in which {to_version} took every call "
            f"(see `forgeone history {plugin}`)"
        )
    for e in earlier:
        if not same_traffic(e.record, current):
            return e
    raise NotFound(f"{plugin} has no earlier deployment to roll back to")


def restore(
    record: DeploymentRecord, current: DeploymentRecord | None, now_ms: int
) -> DeploymentRecord:
    """An earlier record, stamped to be newer than ``current`` so workers take it."""
    return dataclasses.replace(record, deployed_at_ms=stamp(now_ms, current))
